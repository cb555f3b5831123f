//! Templates of paths and bodies: `{target.id}`, `{params.NAME}`, `{captured.NAME}`,
//! `{lease.id}`…, path segments percent-encoded.

use super::*;

/// The value of a placeholder; `a|b` is the first alternative that has one.
pub(super) fn lookup(call: &Call, p: &str) -> Option<String> {
    p.split('|').find_map(|alt| lookup_one(call, alt.trim()))
}

pub(super) fn lookup_one(call: &Call, p: &str) -> Option<String> {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    match p {
        "target" => Some(format!("{}:{}", call.target_kind, call.target_id)),
        "target.kind" => Some(call.target_kind.clone()),
        "target.id" => Some(call.target_id.clone()),
        "lease.id" => Some(call.lease_id.clone()),
        "lease.token" => Some(call.lease_token.clone()).filter(|t| !t.is_empty()),
        "task" => Some(call.task.clone()),
        "agent" => Some(call.agent.clone()),
        "action" => Some(call.action.clone()),
        _ => {
            let (root, name) = p.split_once('.')?;
            match root {
                "params" => call.params.get(name).and_then(text),
                "captured" => call.captured.get(name).and_then(text),
                _ => None,
            }
        }
    }
}

pub(super) fn render(text: &str, call: &Call, encode: bool) -> Result<String, ConnectorError> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        out.push_str(&rest[..open]);
        let p = &rest[open + 1..open + close];
        let v = lookup(call, p)
            .ok_or_else(|| ConnectorError::Template(format!("`{{{p}}}` has no value for action `{}`", call.action)))?;
        out.push_str(&if encode { encode_segment(&v) } else { v });
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub(super) fn encode_segment(s: &str) -> String {
    // A whole value of `.` or `..` would be a path segment of its own that servers and
    // proxies resolve (`/messages/../quarantine`): its dots are encoded, so it stays a name.
    if s == "." || s == ".." {
        return "%2E".repeat(s.len());
    }
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub(super) fn render_value(v: &Value, call: &Call) -> Result<Value, ConnectorError> {
    Ok(match v {
        Value::String(s) => Value::String(render(s, call, false)?),
        Value::Array(a) => Value::Array(a.iter().map(|x| render_value(x, call)).collect::<Result<_, _>>()?),
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, x) in o {
                // A field that is one placeholder with no value (an optional param not given)
                // is left out: the call sends exactly what was decided, nothing invented.
                if let Value::String(s) = x
                    && let Some(p) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}'))
                    && !p.contains(['{', '}'])
                    && lookup(call, p).is_none()
                {
                    continue;
                }
                out.insert(k.clone(), render_value(x, call)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}
