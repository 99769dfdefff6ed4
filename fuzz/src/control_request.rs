//! Control-socket commands (src/manager/control.rs): the JSON request lines a local client
//! sends to a node, decoded by [`decode_request`] as the server does, and the response lines
//! the CLI decodes. Input: selector byte (even: requests, odd: responses), then lines split at
//! `\n` as the server splits them. An accepted line must re-encode and decode again, to the
//! same value unless it holds floats.

use crate::{rejected, tagged};
use interlink::manager::control::{decode_request, ControlRequest, ControlResponse};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    for line in rest.split(|&b| b == b'\n') {
        if selector % 2 == 0 {
            match decode_request(line) {
                Ok(r) => round_trip(&r, |s| decode_request(s.as_bytes()).expect("re-decode")),
                Err(e) => rejected(&e),
            }
        } else {
            match serde_json::from_slice::<ControlResponse>(line) {
                Ok(r) => round_trip(&r, |s| serde_json::from_str(s).expect("re-decode")),
                Err(e) => rejected(&e),
            }
        }
    }
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(
    v: &T,
    decode: impl Fn(&str) -> T,
) {
    let text = serde_json::to_string(v).expect("a decoded value encodes");
    let back = decode(&text);
    // JSON text need not carry a float bit for bit (serde_json parses to within an ulp):
    // values with floats only have to decode again.
    let tree = serde_json::to_value(v).expect("to a JSON tree");
    if !has_float(&tree) {
        assert_eq!(&back, v);
        assert_eq!(serde_json::to_string(&back).expect("encode"), text);
    }
}

fn has_float(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}

/// Every request kind, a client command with nested values, and responses.
pub fn seeds() -> Vec<Vec<u8>> {
    let reqs = [
        ControlRequest::Status,
        ControlRequest::Shutdown,
        ControlRequest::Client {
            name: "giveback".into(),
            command: serde_json::json!({"op": "giveback", "force": false}),
        },
        ControlRequest::Client {
            name: "probe0".into(),
            command: serde_json::json!({"op": "run", "size": 4096, "count": 10, "rate": 1.5, "tags": ["a", null]}),
        },
    ];
    let mut out: Vec<Vec<u8>> = reqs
        .iter()
        .map(|r| tagged(0, serde_json::to_string(r).expect("encode").as_bytes()))
        .collect();
    out.push(tagged(
        0,
        b"{\"cmd\":\"status\"}\r\n{\"cmd\":\"shutdown\"}\n",
    ));
    let resps = [
        ControlResponse::Ok {
            value: serde_json::json!({"state": "up"}),
        },
        ControlResponse::error("no probe named \"x\""),
    ];
    for r in &resps {
        out.push(tagged(
            1,
            serde_json::to_string(r).expect("encode").as_bytes(),
        ));
    }
    out
}
