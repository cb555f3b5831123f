//! What the API accepts, defined once.
//!
//! Each rule here is used twice: by the code that checks input, and by the OpenAPI document
//! that states it (a JSON Schema `pattern`, `minimum`/`maximum`, `minLength`), so the two
//! cannot drift apart. Patterns use only what the regex dialects of JSON Schema (ECMA-262),
//! Python and Rust read the same way: ASCII classes and explicit character lists — for
//! example, *blank* means nothing but spaces, tabs, CRs and LFs, not each engine's idea of
//! Unicode white space.

use warden_core::duration::Duration;

use crate::error::{ApiError, Code};

/// A string that is not blank: it holds a character other than space, tab, CR and LF.
pub const NOT_BLANK: &str = "[^ \\t\\r\\n]";

/// Whether `s` holds nothing but spaces, tabs, CRs and LFs (the negation of [`NOT_BLANK`]).
pub fn is_blank(s: &str) -> bool {
    s.chars().all(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
}

/// A task id: 1–128 of `A–Z a–z 0–9 - _ . :`.
pub const TASK_ID: &str = "^[A-Za-z0-9._:-]{1,128}$";

/// A user name: 1–64 lowercase letters, digits, `-`, `_`, `.`, `@`.
pub const USER_NAME: &str = "^[a-z0-9._@-]{1,64}$";

/// A role: as a user name, and `:` (a team, `team:endpoint-response`).
pub const ROLE: &str = "^[a-z0-9._@:-]{1,64}$";

/// A SPIFFE ID as Warden registers agents: `spiffe://` + a lowercase trust domain + one or
/// more path segments of letters, digits, `.`, `-`, `_`, none of them `.` or `..`.
pub const SPIFFE_ID: &str = "^spiffe://[a-z0-9._-]+(/([A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*|[.]{3,}))+$";

/// A target, `KIND:ID`: a lowercase word, a colon, and an id of one spelling (no control,
/// space or format character, no `.`/`..` segment) — what `TargetRef` parses and
/// `ActionRequest::validate` accepts.
pub fn target_pattern() -> String {
    warden_core::inventory::target_pattern()
}

/// An OIDC identity a user is mapped to: `ISSUER#SUB`, both parts non-empty, no control
/// character or space (the first `#` separates them).
pub const OIDC_IDENTITY: &str = "^[^#\\x00-\\x20\\x7f-\\x9f]+#[^\\x00-\\x20\\x7f-\\x9f]+$";

/// Whether `s` is an [`OIDC_IDENTITY`].
pub fn is_oidc_identity(s: &str) -> bool {
    let bad = |c: char| c <= ' ' || ('\u{7f}'..='\u{9f}').contains(&c);
    s.split_once('#').is_some_and(|(iss, sub)| !iss.is_empty() && !sub.is_empty() && !s.chars().any(bad))
}

/// The largest integer the API takes anywhere (2^53 − 1: exact in every JSON reader).
pub const MAX_INT: u64 = (1 << 53) - 1;

/// The longest lease or token lifetime the API sets: a day.
pub const MAX_TTL_SECS: u64 = 86_400;

/// The oldest `since` a listing looks back: ten years.
pub const MAX_SINCE_SECS: u64 = 3650 * 86_400;

/// A page cursor of a list ordered by time: the last item's time (Unix ms) and id.
pub const TIME_CURSOR: &str = "^[0-9]{1,15}[.][A-Za-z0-9_-]{1,128}$";

/// A page cursor of a list ordered by id: the last item's id.
pub const ID_CURSOR: &str = "^[A-Za-z0-9_-]{1,128}$";

/// The cursor text after a record: `AT.ID` (time order) or `ID` (id order).
pub fn cursor_text(c: &warden_store::Cursor, order: warden_store::Order) -> String {
    match (order, c.at) {
        (warden_store::Order::At, Some(at)) => format!("{at}.{}", c.id),
        _ => c.id.clone(),
    }
}

/// Parses `after` as [`cursor_text`] wrote it for `order`; else 422 `invalid_cursor`.
pub fn cursor(text: &str, order: warden_store::Order) -> Result<warden_store::Cursor, ApiError> {
    let bad = || ApiError::new(Code::InvalidCursor, format!("`{text}` is not a cursor of this list"));
    let id_ok = |id: &str| {
        (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    match order {
        warden_store::Order::Id if id_ok(text) => Ok(warden_store::Cursor { at: None, id: text.to_string() }),
        warden_store::Order::Id => Err(bad()),
        warden_store::Order::At => {
            let (at, id) = text.split_once('.').ok_or_else(bad)?;
            if at.is_empty() || at.len() > 15 || !at.bytes().all(|b| b.is_ascii_digit()) || !id_ok(id) {
                return Err(bad());
            }
            Ok(warden_store::Cursor { at: Some(at.parse().map_err(|_| bad())?), id: id.to_string() })
        }
    }
}

/// `value` if `lo ≤ value ≤ hi`; else 422 `invalid_request` naming the parameter.
pub fn in_range(name: &str, value: u64, lo: u64, hi: u64) -> Result<u64, ApiError> {
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::new(Code::InvalidRequest, format!("`{name}` must be between {lo} and {hi}, not {value}")))
    }
}

/// `value` if it is at most `hi`; else 422 `invalid_request`.
pub fn at_most(name: &str, value: u64, hi: u64) -> Result<u64, ApiError> {
    in_range(name, value, 0, hi)
}

/// Parses a duration as the API takes it (`30s`, `10m`, `1h`, `7d`: digits, then one unit,
/// nothing around them) and checks `min_secs ≤ it ≤ max_secs`. [`duration_pattern`] states
/// the same rule.
pub fn duration(name: &str, text: &str, min_secs: u64, max_secs: u64) -> Result<u64, String> {
    if text.trim() != text {
        return Err(format!("`{name}` `{text}` has spaces around it"));
    }
    let secs = Duration::parse(text).map_err(|e| format!("`{name}`: {e}"))?.as_secs();
    if !(min_secs..=max_secs).contains(&secs) {
        return Err(format!(
            "`{name}` must be between {} and {}, not `{text}`",
            Duration::from_secs(min_secs),
            Duration::from_secs(max_secs)
        ));
    }
    Ok(secs)
}

/// The pattern of the durations [`duration`] accepts between `min_secs` and `max_secs`.
pub fn duration_pattern(min_secs: u64, max_secs: u64) -> String {
    let mut alternatives = Vec::new();
    for (unit, scale) in [("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)] {
        let lo = min_secs.div_ceil(scale);
        let hi = max_secs / scale;
        if lo <= hi {
            // Leading zeros parse (`007s`), so the pattern takes them too.
            alternatives.push(format!("0*({}){unit}", uint_range(lo, hi)));
        }
    }
    format!("^({})$", alternatives.join("|"))
}

/// A regex (no anchors) for the decimal numbers `lo..=hi`, written without leading zeros.
pub fn uint_range(lo: u64, hi: u64) -> String {
    assert!(lo <= hi, "an empty range");
    let mut parts = Vec::new();
    let (mut from, digits_hi) = (lo, hi.to_string().len());
    for len in from.to_string().len()..=digits_hi {
        let top = if len >= 20 { u64::MAX } else { 10u64.pow(len as u32) - 1 };
        let to = hi.min(top);
        same_length(&from.to_string(), &to.to_string(), &mut parts, String::new());
        if to == hi {
            break;
        }
        from = to + 1;
    }
    parts.join("|")
}

/// Alternatives matching `a..=b`, two numbers of the same length, each prefixed by `prefix`.
fn same_length(a: &str, b: &str, out: &mut Vec<String>, prefix: String) {
    if a.is_empty() {
        out.push(prefix);
        return;
    }
    let (a0, b0) = (a.as_bytes()[0] - b'0', b.as_bytes()[0] - b'0');
    let (ra, rb) = (&a[1..], &b[1..]);
    if a0 == b0 {
        same_length(ra, rb, out, format!("{prefix}{a0}"));
        return;
    }
    let any = "[0-9]".repeat(ra.len());
    let zeros = "0".repeat(ra.len());
    let nines = "9".repeat(ra.len());
    // The first digit's span, widened to whole blocks where the rest is 0…0 / 9…9.
    let first_full = if ra == zeros { a0 } else { a0 + 1 };
    let last_full = if rb == nines { b0 } else { b0 - 1 };
    if ra != zeros {
        same_length(ra, &nines, out, format!("{prefix}{a0}"));
    }
    if first_full <= last_full {
        let digit =
            if first_full == last_full { first_full.to_string() } else { format!("[{first_full}-{last_full}]") };
        out.push(format!("{prefix}{digit}{any}"));
    }
    if rb != nines {
        same_length(&zeros, rb, out, format!("{prefix}{b0}"));
    }
}

/// A string schema with `pattern`, for a field's `schema_with` (which replaces the field's
/// doc comment: the description goes here).
pub fn text(pattern: impl Into<String>, description: &str, example: &str) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .description(Some(description))
        .examples([example])
        .build()
}

/// `schema`, also taking `null`: an optional field (`null` reads as absent).
pub fn optional(mut schema: utoipa::openapi::schema::Object) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{SchemaType, Type};
    schema.schema_type = SchemaType::from_iter([Type::String, Type::Null]);
    schema
}

/// A non-blank string.
pub fn not_blank(description: &str, example: &str) -> utoipa::openapi::schema::Object {
    text(NOT_BLANK, description, example)
}

/// A duration between `min_secs` and `max_secs`.
pub fn duration_text(
    min_secs: u64,
    max_secs: u64,
    description: &str,
    example: &str,
) -> utoipa::openapi::schema::Object {
    text(duration_pattern(min_secs, max_secs), description, example)
}

/// A reason recorded in the audit log: required, not blank.
pub fn reason_schema() -> utoipa::openapi::schema::Object {
    not_blank("Why (not blank); recorded in the audit log.", "contained on the runbook's advice")
}

/// SPIFFE IDs and whether they are valid: the pattern and the check both answer these.
#[cfg(test)]
pub(crate) const SPIFFE_CASES: &[(&str, bool)] = &[
    ("spiffe://acme.example/soc/edr", true),
    ("spiffe://acme.example/a/.../b", true),
    ("spiffe://acme.example/a/./b", false),
    ("spiffe://acme.example/a/../b", false),
    ("spiffe://acme.example/a//b", false),
    ("spiffe://acme.example/", false),
    ("spiffe://ACME/x", false),
    ("spiffe://acme/x/", false),
    ("https://acme/x", false),
];

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use regex::Regex;

    use super::*;

    fn anchored(p: &str) -> Regex {
        Regex::new(&format!("^({p})$")).unwrap()
    }

    #[test]
    fn ranges_match_exactly_their_numbers() {
        for (lo, hi) in [(0, 0), (0, 9), (1, 9), (0, 60), (1, 1440), (7, 123), (99, 1000), (5, 86_400), (0, 3650)] {
            let re = anchored(&uint_range(lo, hi));
            for n in 0..=hi * 2 + 20 {
                assert_eq!(re.is_match(&n.to_string()), (lo..=hi).contains(&n), "{n} in {lo}..={hi}: {re}");
            }
        }
    }

    proptest! {
        #[test]
        fn any_range_matches_exactly_its_numbers(lo in 0u64..1_000_000, span in 0u64..2_000_000, probe in 0u64..4_000_000) {
            let hi = lo + span;
            let re = anchored(&uint_range(lo, hi));
            for n in [lo, hi, probe, lo.saturating_sub(1), hi + 1] {
                prop_assert_eq!(re.is_match(&n.to_string()), (lo..=hi).contains(&n), "{} in {}..={}", n, lo, hi);
            }
        }

        /// The target pattern the API states and what a request's target is held to agree on
        /// ids of dots, slashes, letters, spaces and invisible characters.
        #[test]
        fn the_target_pattern_is_the_check(id in "[a./\\\\ A\u{200b}\u{feff}\u{a0}\u{e0041}é\u{ff42}\u{ff0e}\u{2024}\u{fe0f}\u{3164}\u{2488}-]{0,8}", kind in "(host|ip|account|x)") {
            let t = format!("{kind}:{id}");
            let accepted = t.parse::<warden_core::inventory::TargetRef>().is_ok_and(|r| r.check().is_ok());
            prop_assert_eq!(Regex::new(&target_pattern()).unwrap().is_match(&t), accepted, "{:?}", t);
        }

        /// The duration pattern and the parser agree on every string of digits and a unit,
        /// and on strings that are not durations at all.
        #[test]
        fn duration_pattern_is_the_parser(text in "( )?[0-9]{0,7}[smhdx ]?( )?", max in prop::sample::select(vec![60u64, 86_400, 3650 * 86_400])) {
            for min in [0, 1] {
                let re = Regex::new(&duration_pattern(min, max)).unwrap();
                prop_assert_eq!(re.is_match(&text), duration("t", &text, min, max).is_ok(), "`{}` in {}..={}", text, min, max);
            }
        }

        /// The cursor patterns and the parsers agree, and a cursor written is read back.
        #[test]
        fn cursor_patterns_are_the_parsers(text in "[0-9]{0,17}[.]?[A-Za-z0-9_.é -]{0,6}", at in 0i64..999_999_999_999_999, id in "[A-Za-z0-9_-]{1,20}") {
            use warden_store::{Cursor, Order};
            for (order, pattern) in [(Order::At, TIME_CURSOR), (Order::Id, ID_CURSOR)] {
                let re = Regex::new(pattern).unwrap();
                prop_assert_eq!(re.is_match(&text), cursor(&text, order).is_ok(), "`{}` {:?}", text, order);
            }
            let c = Cursor { at: Some(at), id: id.clone() };
            prop_assert_eq!(cursor(&cursor_text(&c, Order::At), Order::At).unwrap(), c);
            let c = Cursor { at: None, id };
            prop_assert_eq!(cursor(&cursor_text(&c, Order::Id), Order::Id).unwrap(), c);
        }

        #[test]
        fn not_blank_is_is_blank(text in "[ \t\r\na\u{a0}\u{3000}\u{85}\u{1c}]{0,4}") {
            let re = Regex::new(NOT_BLANK).unwrap();
            prop_assert_eq!(re.is_match(&text), !is_blank(&text));
        }
    }

    #[test]
    fn an_inputs_source_pattern_agrees_with_its_check() {
        let re = Regex::new(&warden_core::request::input_source_pattern()).unwrap();
        let accepted = |s: &str| {
            let mut req: warden_core::request::ActionRequest = serde_json::from_value(serde_json::json!({
                "task": "T", "action": "a.b", "target": "host:h", "confidence": 0.5,
                "inputs": [{"label": "untrusted", "source": s}]}))
            .unwrap();
            req.params.clear();
            req.check_inputs().is_ok()
        };
        for s in [
            "the body of message m-77",
            " x ",
            "é",
            "",
            " ",
            "   ",
            "a\tb",
            "a\nb",
            "a\u{7}b",
            "a\u{85}b",
            "a\u{ad}b",
            "\u{202e}gnp.exe",
            "a\u{200b}",
            "\u{feff}x",
            "a\u{2066}b",
            "\u{a0}",
            "\u{3000}",
        ] {
            assert_eq!(re.is_match(s), accepted(s), "{s:?}");
        }
    }

    #[test]
    fn named_patterns_agree_with_their_checks() {
        let spiffe = Regex::new(SPIFFE_ID).unwrap();
        // `admin::check_spiffe_id` is held to the same list in its own tests.
        for (id, ok) in SPIFFE_CASES {
            assert_eq!(spiffe.is_match(id), *ok, "{id}");
        }
        let oidc = Regex::new(OIDC_IDENTITY).unwrap();
        for o in
            ["https://idp.example#00u1", "iss#", "#sub", "a#b#c", "a b#c", "a#b\u{85}", "a#b\u{a0}", "a\u{7}#b", "é#ü"]
        {
            assert_eq!(oidc.is_match(o), is_oidc_identity(o), "{o:?}");
        }
        let target = Regex::new(&target_pattern()).unwrap();
        let accepted = |t: &str| t.parse::<warden_core::inventory::TargetRef>().is_ok_and(|r| r.check().is_ok());
        for t in [
            "host:web-42",
            "user:a:b",
            "host:",
            ":x",
            "Host:x",
            "host:a\u{7}",
            "host:a\u{85}",
            "host:é",
            "host:a b",
            "host:a\u{a0}b",
            "account:break\u{200b}glass",
            "account:x\u{feff}",
            "host:\u{e0041}x",
            "host:\u{1d173}",
            "host:.",
            "host:..",
            "host:a/../b",
            "host:a/./b",
            "host:./a",
            "host:a\\..",
            "host:...",
            "host:.a",
            "host:..a",
            "host:a.",
            "host:a/",
            "host:/a",
            "host:a//b",
            "mailbox:jdoe@acme.example",
            "ip:::ffff:10.0.0.1",
            "url:https://x.example/a?b=c",
            "host:\u{2010}a",
            "account:\u{ff42}reakglass-01",
            "account:breakglass-01\u{fe0f}",
            "account:a\u{34f}b",
            "account:\u{3164}",
            "host:a\u{2024}\u{2024}",
            "host:\u{ff0e}",
            "host:a\u{ff0f}b",
            "host:\u{2488}",
            "account:x.",
        ] {
            assert_eq!(target.is_match(t), accepted(t), "{t:?}");
        }
    }
}
