//! The one-pass canonical check agrees with "parse, re-serialize, compare", on canonical
//! values and on every small corruption of them.

use proptest::prelude::*;
use serde_json::{Map, Value};
use warden_core::audit::canonical::{check, to_vec};

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e30f64..1e30).prop_map(Value::from),
        "[a-z\\u{0}-\\u{1f}\"\\\\é€😀דּ]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-c\\r€😀דּ]{0,3}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn object() -> impl Strategy<Value = Value> {
    (prop::collection::btree_map("[a-z]{1,4}", json(), 0..5), any::<u32>()).prop_map(|(m, seq)| {
        let mut m: Map<String, Value> = m.into_iter().collect();
        m.insert("seq".into(), Value::from(seq));
        Value::Object(m)
    })
}

/// The slow, obviously right answer.
fn reference(bytes: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) => to_vec(&v).is_ok_and(|again| again == bytes),
        _ => false,
    }
}

proptest! {
    #[test]
    fn canonical_bytes_pass_with_their_seq(v in object()) {
        let bytes = to_vec(&v).unwrap();
        let top = check(&bytes).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&bytes))))?;
        prop_assert_eq!(top.seq, v["seq"].as_u64());
    }

    #[test]
    fn corruptions_are_judged_like_the_reference(v in object(), at in any::<prop::sample::Index>(), op in 0u8..4, byte in any::<u8>()) {
        let mut bytes = to_vec(&v).unwrap();
        let i = at.index(bytes.len());
        match op {
            0 => bytes.insert(i, b' '),
            1 => bytes[i] = byte,
            2 => { bytes.remove(i); }
            _ => { let j = (i + 1).min(bytes.len() - 1); bytes.swap(i, j); }
        }
        prop_assert_eq!(check(&bytes).is_ok(), reference(&bytes), "{}", String::from_utf8_lossy(&bytes));
    }
}
