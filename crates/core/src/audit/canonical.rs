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
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
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
