//! RFC 8785 JSON Canonicalization Scheme: the exact bytes an audit entry is hashed as.
//!
//! Objects have their members sorted by the UTF-16 code units of their names, strings use the
//! minimal escapes, numbers are written as ECMAScript writes them, no whitespace anywhere.

use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("numbers must be finite, not `{0}`")]
    NotFinite(String),
}

/// The canonical bytes of `value`.
pub fn to_vec(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = String::new();
    write_value(value, &mut out)?;
    Ok(out.into_bytes())
}

/// One object member, `"name":value`, in canonical form: an object's canonical bytes are its
/// members in [`member_order`], joined by `,`, between braces.
pub fn member(name: &str, value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::new();
    write_string(name, &mut out);
    out.push(':');
    write_value(value, &mut out)?;
    Ok(out)
}

/// The order of an object's members: by the UTF-16 code units of their names.
pub fn member_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

fn write_value(v: &Value, out: &mut String) -> Result<(), CanonicalError> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        // JCS numbers are IEEE doubles: integers beyond 2^53 are written as the nearest
        // double, exactly as `JSON.stringify` would.
        Value::Number(n) => out.push_str(&number(n.as_f64().unwrap_or(f64::NAN))?),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| member_order(a.0, b.0));
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_value(v, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// An IEEE double as ECMAScript's `Number.prototype.toString` writes it (RFC 8785 §3.2.2.3).
pub fn number(x: f64) -> Result<String, CanonicalError> {
    if !x.is_finite() {
        return Err(CanonicalError::NotFinite(x.to_string()));
    }
    if x == 0.0 {
        return Ok("0".into());
    }
    // Rust's `{:e}` gives the shortest digits that round-trip: `d.ddde±x`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i32;
    let n = exp.parse::<i32>().unwrap_or(0) + 1; // value = 0.digits × 10^n
    let mut s = String::from(if x < 0.0 { "-" } else { "" });
    if k <= n && n <= 21 {
        s.push_str(&digits);
        s.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        s.push_str(&digits[..n as usize]);
        s.push('.');
        s.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        s.push_str("0.");
        s.extend(std::iter::repeat_n('0', (-n) as usize));
        s.push_str(&digits);
    } else {
        s.push_str(&digits[..1]);
        if k > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        s.push('e');
        s.push(if n - 1 < 0 { '-' } else { '+' });
        s.push_str(&(n - 1).abs().to_string());
    }
    Ok(s)
}

/// Why bytes are not canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not RFC 8785 canonical JSON at byte {at}: {what}")]
pub struct NotCanonical {
    pub at: usize,
    pub what: &'static str,
}

/// What [`check`] learnt of a canonical object on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopLevel {
    /// The top-level member `seq`, when it is a non-negative integer.
    pub seq: Option<u64>,
}

/// Checks that `bytes` are exactly the canonical form of a JSON object — what
/// `to_vec(parse(bytes)) == bytes` checks, in one pass and without building the value.
pub fn check(bytes: &[u8]) -> Result<TopLevel, NotCanonical> {
    let text = std::str::from_utf8(bytes).map_err(|e| NotCanonical { at: e.valid_up_to(), what: "invalid UTF-8" })?;
    let mut sc = Scanner { s: text, b: bytes, i: 0, top: TopLevel::default() };
    if sc.peek() != Some(b'{') {
        return Err(sc.err("the entry must be an object"));
    }
    sc.value(0)?;
    if sc.i != bytes.len() {
        return Err(sc.err("trailing bytes"));
    }
    Ok(sc.top)
}

struct Scanner<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    top: TopLevel,
}

impl<'a> Scanner<'a> {
    fn err(&self, what: &'static str) -> NotCanonical {
        NotCanonical { at: self.i, what }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn eat(&mut self, c: u8, what: &'static str) -> Result<(), NotCanonical> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }
    fn literal(&mut self, lit: &str) -> Result<(), NotCanonical> {
        if self.b[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(self.err("unknown literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), NotCanonical> {
        if depth > 128 {
            return Err(self.err("nested too deeply"));
        }
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => {
                self.i += 1;
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.value(depth + 1)?;
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(self.err("expected `,` or `]`")),
                    }
                }
            }
            Some(b'"') => self.string().map(|_| ()),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(|_| ()),
            _ => Err(self.err("expected a value (no whitespace is allowed)")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), NotCanonical> {
        self.i += 1;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        let mut prev: Option<std::borrow::Cow<'a, str>> = None;
        loop {
            let key_at = self.i;
            let key = self.string()?;
            if let Some(p) = &prev
                && p.encode_utf16().cmp(key.encode_utf16()) != std::cmp::Ordering::Less
            {
                return Err(NotCanonical { at: key_at, what: "members out of order or repeated" });
            }
            self.eat(b':', "expected `:`")?;
            if depth == 0 && key == "seq" {
                let start = self.i;
                let is_int = self.number()?;
                let digits = &self.s[start..self.i];
                if is_int && !digits.starts_with('-') {
                    self.top.seq = digits.parse().ok();
                }
            } else {
                self.value(depth + 1)?;
            }
            prev = Some(key);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected `,` or `}`")),
            }
        }
    }

    /// A string with exactly the minimal escapes; its decoded text.
    fn string(&mut self) -> Result<std::borrow::Cow<'a, str>, NotCanonical> {
        self.eat(b'"', "expected a string")?;
        let start = self.i;
        let mut owned: Option<String> = None;
        loop {
            let Some(c) = self.peek() else { return Err(self.err("unterminated string")) };
            match c {
                b'"' => {
                    let raw = &self.s[start..self.i];
                    self.i += 1;
                    return Ok(match owned {
                        Some(o) => std::borrow::Cow::Owned(o),
                        None => std::borrow::Cow::Borrowed(raw),
                    });
                }
                0x00..=0x1f => return Err(self.err("unescaped control character")),
                b'\\' => {
                    let o = owned.get_or_insert_with(String::new);
                    if o.is_empty() {
                        o.push_str(&self.s[start..self.i]);
                    }
                    let (ch, len) = match self.b.get(self.i + 1) {
                        Some(b'"') => ('"', 2),
                        Some(b'\\') => ('\\', 2),
                        Some(b'b') => ('\u{8}', 2),
                        Some(b'f') => ('\u{c}', 2),
                        Some(b'n') => ('\n', 2),
                        Some(b'r') => ('\r', 2),
                        Some(b't') => ('\t', 2),
                        Some(b'u') => {
                            let hex = self.s.get(self.i + 2..self.i + 6).ok_or_else(|| self.err("short \\u escape"))?;
                            let v = u32::from_str_radix(hex, 16).map_err(|_| self.err("bad \\u escape"))?;
                            let short = matches!(v, 0x8 | 0x9 | 0xa | 0xc | 0xd);
                            if v >= 0x20 || short || hex.bytes().any(|h| h.is_ascii_uppercase()) {
                                return Err(self.err("\\u escape where canonical JSON writes the character"));
                            }
                            (char::from_u32(v).unwrap_or('\0'), 6)
                        }
                        _ => return Err(self.err("escape canonical JSON does not use")),
                    };
                    o.push(ch);
                    self.i += len;
                    // Keep copying from here on.
                    let rest_start = self.i;
                    while let Some(c) = self.peek() {
                        if c == b'"' || c == b'\\' || c < 0x20 {
                            break;
                        }
                        self.i += 1;
                    }
                    o.push_str(&self.s[rest_start..self.i]);
                }
                _ => self.i += 1,
            }
        }
    }

    /// A number in ECMAScript's form; whether it was written as an integer.
    fn number(&mut self) -> Result<bool, NotCanonical> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let int_start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        let int_digits = self.i - int_start;
        let mut plain_int = true;
        if matches!(self.peek(), Some(b'.' | b'e' | b'E' | b'+')) {
            plain_int = false;
            while matches!(self.peek(), Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')) {
                self.i += 1;
            }
        }
        let text = &self.s[start..self.i];
        if int_digits == 0 {
            return Err(NotCanonical { at: start, what: "malformed number" });
        }
        // Short integers are canonical exactly when they have no leading zero and are not -0;
        // anything else must be what ECMAScript would print for the same double.
        if plain_int && int_digits <= 15 {
            let digits = &self.s[int_start..self.i];
            if (digits.starts_with('0') && digits.len() > 1) || text == "-0" {
                return Err(NotCanonical { at: start, what: "number not in canonical form" });
            }
            return Ok(true);
        }
        let v: f64 = text.parse().map_err(|_| NotCanonical { at: start, what: "malformed number" })?;
        match number(v) {
            Ok(canon) if canon == text => Ok(plain_int),
            _ => Err(NotCanonical { at: start, what: "number not in canonical form" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from RFC 8785 Appendix B and the ECMAScript rules it cites.
    #[test]
    fn numbers_are_written_as_ecmascript_does() {
        let cases: [(u64, &str); 7] = [
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
        ];
        for (bits, want) in cases {
            assert_eq!(number(f64::from_bits(bits)).unwrap(), want, "{bits:#x}");
        }
        assert_eq!(number(0.93).unwrap(), "0.93");
        assert_eq!(number(-1.5).unwrap(), "-1.5");
        assert_eq!(number(1e-7).unwrap(), "1e-7");
        assert_eq!(number(123456789012.5).unwrap(), "123456789012.5");
        assert_eq!(number(1e20).unwrap(), "100000000000000000000");
        assert!(number(f64::NAN).is_err() && number(f64::INFINITY).is_err());
    }

    #[test]
    fn check_accepts_exactly_the_canonical_forms() {
        let v = serde_json::json!({"a": {"y": true, "z": null}, "b": [1, 2.5, -0.001, 1e30, "x\u{1}\n\"\\é€😀"], "seq": 42});
        let bytes = to_vec(&v).unwrap();
        assert_eq!(check(&bytes).unwrap().seq, Some(42));
        for bad in [
            r#"{"b":1,"a":2}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a": 1}"#,
            r#"{"a":01}"#,
            r#"{"a":1.0}"#,
            r#"{"a":1E3}"#,
            r#"{"a":-0}"#,
            r#"{"a":"\u0041"}"#,
            r#"{"a":"\/"}"#,
            r#"{"a":"\u000A"}"#,
            r#"{"a":"\u000a"}"#,
            r#"{"a":9007199254740993}"#,
            r#"{"a":1}x"#,
            r#"[1]"#,
            r#"{"a":tru}"#,
        ] {
            assert!(check(bad.as_bytes()).is_err(), "accepted {bad}");
        }
        assert_eq!(check(br#"{"data":{"seq":1},"seq":7}"#).unwrap().seq, Some(7), "only the top level counts");
        assert_eq!(check(br#"{"seq":-1}"#).unwrap().seq, None);
        assert!(check(br#"{"a":"\u001f","b":"\t","c":1e+21,"d":0.000001}"#).is_ok());
    }

    #[test]
    fn objects_sort_by_utf16_and_strings_escape_minimally() {
        // RFC 8785 §3.2.3 sorting example, keys in UTF-16 order.
        let v: Value = serde_json::from_str(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        let got = String::from_utf8(to_vec(&v).unwrap()).unwrap();
        let order: Vec<&str> = ["\\r", "1", "\u{80}", "\u{f6}", "\u{20ac}", "\u{1f600}", "\u{fb33}"].to_vec();
        let mut last = 0;
        for key in order {
            let at = got.find(&format!("\"{key}\":")).unwrap_or_else(|| panic!("{key} missing in {got}"));
            assert!(at >= last, "{key} out of order in {got}");
            last = at;
        }
        let v = serde_json::json!({"b": [1, 2.5, "x\u{1}\n\"\\"], "a": {"z": null, "y": true}});
        assert_eq!(
            String::from_utf8(to_vec(&v).unwrap()).unwrap(),
            r#"{"a":{"y":true,"z":null},"b":[1,2.5,"x\u0001\n\"\\"]}"#
        );
    }
}
