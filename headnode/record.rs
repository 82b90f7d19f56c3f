//! The record a headnode forwards: the message with its request id, its id and its time.
//!
//! The id belongs to the request, not to the datanode that happens to store it: it is the
//! UUIDv5 (RFC 9562: SHA-1, name-based) of the request id under [`ID_NAMESPACE`]. The same
//! request id therefore gives the same id on every headnode, on every replica and on every
//! retry, so copies of one message (a retry that reached another datanode, a stray copy of a
//! forward that timed out) are recognisably the same message, and List shows it once.
//! The derivation is fixed: changing the namespace or the function changes the id of every
//! message stored from then on.
//!
//! A Store that came without a request id gets a random key here (a UUIDv7: printable ASCII,
//! time-ordered, random in its low bits), kept through every forward of that Store: it places
//! the message and is its id (no other headnode will ever derive it, so it needs no
//! derivation), so the headnode's own failover places it down the same order and a stray copy is
//! the same record. The key is not written as the record's `request_id`: no
//! client sent it, so none can repeat it, and the datanodes' idempotency maps (and their horizon
//! for the keys clients do send) are not spent on it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::pb::Record;

/// The namespace of ids derived from request ids; fixed once and for all (a random v4 UUID).
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x1924_2a0e_01ce_448e_8fb2_1a8b_365d_676c);

/// The id of the message whose request id is `request_id` (see the module docs).
pub fn derive_id(request_id: &str) -> String {
    Uuid::new_v5(&ID_NAMESPACE, request_id.as_bytes()).to_string()
}

/// The key that places a stored record: its request id, or, for a Store that came without one,
/// its id (which is the random key that placed it, see the module docs).
pub fn placement_key<'a>(request_id: &'a str, id: &'a str) -> &'a str {
    if request_id.is_empty() {
        id
    } else {
        request_id
    }
}

/// A record to forward, and the key that places it.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// The request id, or the random key of a Store that came without one.
    pub key: String,
    pub record: Record,
}

/// The record to forward for `message`, stored now: the id derived from `request_id` (or, when
/// empty, a random key that is also the id), the client's `request_id` as it was, and the time in the data
/// file's precision (milliseconds), so the reply's `stored_at` is exactly what List later shows.
pub fn new(message: &str, request_id: &str) -> Placed {
    let (key, id) = if request_id.is_empty() {
        let key = crate::uuid_v7();
        (key.clone(), key)
    } else {
        (request_id.to_string(), derive_id(request_id))
    };
    let now = Utc::now();
    let stored_at = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
    let record = Record {
        id,
        stored_at: Some(crate::time::to_proto(stored_at)),
        message: message.to_string(),
        request_id: request_id.to_string(),
    };
    Placed { key, record }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_a_fixed_function_of_the_request_id() {
        // Pinned (computed independently with Python's uuid.uuid5): every headnode must derive
        // the same id, in every build and version.
        assert_eq!(
            derive_id("order-42"),
            "b87ee60b-3717-5654-891f-188e0c108cc3"
        );
        assert_eq!(derive_id("order-42"), derive_id("order-42"));
        assert_ne!(derive_id("order-42"), derive_id("order-43"));
        let id = Uuid::parse_str(&derive_id("order-42")).unwrap();
        assert_eq!(id.get_version_num(), 5);
    }

    #[test]
    fn a_store_without_a_request_id_gets_a_random_printable_key() {
        let a = new("m", "");
        let b = new("m", "");
        assert_ne!(a.key, b.key);
        assert_ne!(a.record.id, b.record.id);
        crate::dedupe::validate_request_id(&a.key).unwrap();
        assert!(!a.key.is_empty());
        assert_eq!(a.record.id, a.key, "a random key is its own id");
        assert_eq!(placement_key(&a.record.request_id, &a.record.id), a.key);
        let keyed = new("m", "order-42");
        assert_eq!(
            placement_key(&keyed.record.request_id, &keyed.record.id),
            keyed.key
        );
        // A UUIDv7 of this millisecond.
        let uuid = Uuid::parse_str(&a.key).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        let (seconds, _) = uuid.get_timestamp().unwrap().to_unix();
        assert!(seconds.abs_diff(Utc::now().timestamp().unsigned_abs()) <= 2);
        assert_eq!(a.record.request_id, "", "the client sent none");
        let given = new("m", "k-1");
        assert_eq!(given.key, "k-1");
        assert_eq!(given.record.request_id, "k-1");
        assert_eq!(given.record.id, derive_id("k-1"));
        let at = given.record.stored_at.unwrap();
        assert_eq!(at.nanos % 1_000_000, 0, "milliseconds");
    }
}
