//! What a tier-1 entry really keeps alive on the heap: the measure tier 1 is bounded by.
//!
//! [`HeapSize`] counts the bytes a value *requests* from the allocator for what it owns
//! (string and vector buffers at their capacity, `Arc` allocations, B-tree nodes), not its own
//! inline size. `tests/heap.rs` checks it against a counting allocator. The impls for the
//! cached domain types destructure every field, so a field added to one of them does not
//! compile until it is counted.
//!
//! The allocator rounds every request up (glibc: an 8-byte header, 16-byte steps, 32 bytes at
//! least). That rounding is counted for the fixed allocations every entry makes (in
//! [`TIER1_ENTRY_OVERHEAD`]), not for the value's own buffers: those add 8 to 31 bytes each,
//! about 20 on average. For the entries of `tests/heap.rs`, decoded under glibc and measured
//! with `malloc_usable_size`, that is 14% (a context) to 24% (a lead with metadata) more
//! than counted here, 30 KB on a 199 KB page of history with transcripts.

use std::mem::{size_of, size_of_val};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::answers::Answer;
use super::entry::{Entry, Value};
use super::keys::{CacheKey, GenKey, Kind, PhoneTag};
use super::local::{LocalEntry, LocalKey};
use crate::domain::{
    Channel, Conversation, ConversationBrief, Lead, LeadContext, LeadStatus, Organization, Phone,
};

pub trait HeapSize {
    /// bytes this value owns on the heap, not counting size_of::<Self>() itself
    fn heap_size(&self) -> usize;
}

/// Types that own nothing on the heap.
macro_rules! no_heap {
    ($($t:ty),* $(,)?) => {
        $(impl HeapSize for $t {
            fn heap_size(&self) -> usize {
                0
            }
        })*
    };
}

no_heap!(
    bool,
    u32,
    u64,
    i64,
    Uuid,
    DateTime<Utc>,
    Channel,
    LeadStatus,
    Kind,
    PhoneTag,
    GenKey,
    CacheKey,
);

impl HeapSize for String {
    fn heap_size(&self) -> usize {
        self.capacity()
    }
}

impl HeapSize for Box<str> {
    fn heap_size(&self) -> usize {
        self.len()
    }
}

impl<T: HeapSize> HeapSize for Vec<T> {
    fn heap_size(&self) -> usize {
        self.capacity() * size_of::<T>() + self.iter().map(HeapSize::heap_size).sum::<usize>()
    }
}

impl<T: HeapSize> HeapSize for Option<T> {
    fn heap_size(&self) -> usize {
        self.as_ref().map_or(0, HeapSize::heap_size)
    }
}

impl<A: HeapSize, B: HeapSize> HeapSize for (A, B) {
    fn heap_size(&self) -> usize {
        self.0.heap_size() + self.1.heap_size()
    }
}

/// The two reference counts at the head of every `Arc` allocation.
const ARC_COUNTS: usize = 2 * size_of::<usize>();

/// The whole `Arc` allocation: its two counts, the value, and what the value owns.
///
/// An `Arc` shared by several holders is counted in full by every one of them: an upper bound,
/// never an undercount. (Tier 1's values are decoded or loaded per entry, so sharing is rare.)
impl<T: HeapSize> HeapSize for Arc<T> {
    fn heap_size(&self) -> usize {
        ARC_COUNTS + size_of::<T>() + (**self).heap_size()
    }
}

/// Keys and values per B-tree node in the standard library (`CAPACITY = 2 * B - 1`, `B = 6`).
const BTREE_CAPACITY: usize = 11;

/// Bytes of one B-tree node holding up to [`BTREE_CAPACITY`] `K`s and `V`s: a leaf is a parent
/// pointer, its index in the parent and its length (`u16` each), then the key and value
/// arrays, always allocated in full; an internal node adds 12 child pointers. For
/// `BTreeMap<String, serde_json::Value>` that is 632 bytes per leaf and 728 per internal node,
/// whether the node holds one key or eleven.
const fn btree_node_bytes(key: usize, value: usize) -> (usize, usize) {
    let leaf = size_of::<usize>() + 2 * size_of::<u16>() + BTREE_CAPACITY * (key + value);
    let align = size_of::<usize>();
    let leaf = leaf.div_ceil(align) * align;
    (leaf, leaf + (BTREE_CAPACITY + 1) * size_of::<usize>())
}

/// Nodes on one level of a B-tree whose keys arrived in ascending order, given the keys that
/// level and those above it hold. A full rightmost node splits into one of 6 keys, one key for
/// the level above and one of 5 (std's `splitpoint` for an insertion at the right edge), so
/// each finished node holds 6 and the last 5 to 11: `m` keys need `ceil((m - 4) / 7)` nodes.
fn btree_level_nodes(keys: usize) -> usize {
    match keys {
        0 => 0,
        1..=BTREE_CAPACITY => 1,
        m => (m - 4).div_ceil(7),
    }
}

/// The bytes of the nodes of a `BTreeMap<K, V>` of `len` entries (not counting what its keys
/// and values own).
///
/// Exact for keys inserted in ascending order, which is how every object decoded from tier 2
/// is built: serde_json writes a map in key order and reads one by inserting key after key.
/// In another order (a JSONB document from Postgres comes sorted by key length) nodes end
/// fuller or emptier around the same two thirds, so the figure stays a fair estimate. Up to
/// eleven entries, the case of nearly every object cached, a map is exactly one leaf.
fn btree_map_bytes(len: usize, key: usize, value: usize) -> usize {
    let (leaf, internal) = btree_node_bytes(key, value);
    let leaves = btree_level_nodes(len);
    let mut bytes = leaves * leaf;
    let mut below = leaves;
    while below > 1 {
        // Each node but the first on a level hangs from a key one level up.
        let level = btree_level_nodes(below - 1);
        bytes += level * internal;
        below = level;
    }
    bytes
}

/// serde_json's `Map` is a `BTreeMap<String, Value>` in this build: its `preserve_order`
/// feature (an `IndexMap`) is off, which a test checks.
impl HeapSize for serde_json::Map<String, serde_json::Value> {
    fn heap_size(&self) -> usize {
        btree_map_bytes(
            self.len(),
            size_of::<String>(),
            size_of::<serde_json::Value>(),
        ) + self
            .iter()
            .map(|(k, v)| k.heap_size() + v.heap_size())
            .sum::<usize>()
    }
}

/// Numbers own nothing: serde_json's `arbitrary_precision` feature, which would keep them as
/// strings, is off (a test checks).
impl HeapSize for serde_json::Value {
    fn heap_size(&self) -> usize {
        match self {
            serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {
                0
            }
            serde_json::Value::String(s) => s.heap_size(),
            serde_json::Value::Array(items) => items.heap_size(),
            serde_json::Value::Object(map) => map.heap_size(),
        }
    }
}

impl HeapSize for Phone {
    fn heap_size(&self) -> usize {
        self.heap_capacity()
    }
}

impl HeapSize for Organization {
    fn heap_size(&self) -> usize {
        let Organization {
            id,
            name,
            phone_number,
            timezone,
            greeting_template,
            created_at,
            updated_at,
        } = self;
        id.heap_size()
            + name.heap_size()
            + phone_number.heap_size()
            + timezone.heap_size()
            + greeting_template.heap_size()
            + created_at.heap_size()
            + updated_at.heap_size()
    }
}

impl HeapSize for Lead {
    fn heap_size(&self) -> usize {
        let Lead {
            id,
            organization_id,
            phone_number,
            customer_name,
            email,
            status,
            notes,
            metadata,
            created_at,
            updated_at,
        } = self;
        id.heap_size()
            + organization_id.heap_size()
            + phone_number.heap_size()
            + customer_name.heap_size()
            + email.heap_size()
            + status.heap_size()
            + notes.heap_size()
            + metadata.heap_size()
            + created_at.heap_size()
            + updated_at.heap_size()
    }
}

impl HeapSize for Conversation {
    fn heap_size(&self) -> usize {
        let Conversation {
            id,
            lead_id,
            organization_id,
            channel,
            external_id,
            summary,
            transcript,
            started_at,
            ended_at,
            created_at,
        } = self;
        id.heap_size()
            + lead_id.heap_size()
            + organization_id.heap_size()
            + channel.heap_size()
            + external_id.heap_size()
            + summary.heap_size()
            + transcript.heap_size()
            + started_at.heap_size()
            + ended_at.heap_size()
            + created_at.heap_size()
    }
}

impl HeapSize for ConversationBrief {
    fn heap_size(&self) -> usize {
        let ConversationBrief {
            id,
            channel,
            summary,
            started_at,
            ended_at,
        } = self;
        id.heap_size()
            + channel.heap_size()
            + summary.heap_size()
            + started_at.heap_size()
            + ended_at.heap_size()
    }
}

impl HeapSize for LeadContext {
    fn heap_size(&self) -> usize {
        let LeadContext {
            lead,
            organization,
            conversation_count,
            last_contact_at,
            recent_conversations,
        } = self;
        lead.heap_size()
            + organization.heap_size()
            + conversation_count.heap_size()
            + last_contact_at.heap_size()
            + recent_conversations.heap_size()
    }
}

impl HeapSize for Value {
    fn heap_size(&self) -> usize {
        match self {
            Value::Organization(v) => v.heap_size(),
            Value::MaybeOrganization(v) => v.heap_size(),
            Value::Lead(v) => v.heap_size(),
            Value::MaybeLead(v) => v.heap_size(),
            Value::Context(v) => v.heap_size(),
            Value::Text(v) => v.heap_size(),
            Value::History(v) => v.heap_size(),
        }
    }
}

impl HeapSize for Entry {
    fn heap_size(&self) -> usize {
        let Entry {
            value,
            deps,
            fresh_until_ms,
            stale_until_ms,
            ttl_ms,
        } = self;
        value.heap_size()
            + deps.heap_size()
            + fresh_until_ms.heap_size()
            + stale_until_ms.heap_size()
            + ttl_ms.heap_size()
    }
}

/// What moka 0.12's `sync::Cache` allocates for each entry, beyond the key and the value it is
/// given, in bytes requested on a 64-bit target, as configured by tier 1 (a weigher and
/// `expire_after`; no `time_to_live`, `time_to_idle`, eviction listener or invalidator):
///
/// | allocation | bytes |
/// | --- | --- |
/// | `ValueEntry` in a `MiniArc` (a `u32` count, padding; the value (two words: which of two `Arc`s), two `MiniArc`s) | 40 |
/// | `EntryInfo` in a `MiniArc` (key `Arc` and hash, three timestamps, weight, flags) | 64 |
/// | `Mutex<DeqNodes>` in a `MiniArc` (three node pointers and a generation) | 48 |
/// | the hash table's `Bucket` (key `Arc`, value `MiniArc`) | 16 |
/// | the bucket array's pointer: 8 bytes a slot, doubled past 70% full, so 1.43 to 2.86 slots an entry | 24 |
/// | the access-order deque node (two links, a `MiniArc`) | 24 |
/// | the timer-wheel node that `expire_after` adds (two links, two `MiniArc`s, position) | 40 |
/// | the frequency sketch: a `u64` a slot, made once at half full with a quarter to half as many slots as the full cache has entries | 4 |
/// | total | 260 |
///
/// The key's own `Arc` (moka moves the key into one) is counted by [`entry_weight`] with the
/// key; the write-order deque is not used without `time_to_live`. Not per entry, so not here:
/// the 64 hash-table segments' first arrays (64 KiB), the timer wheel (about 8 KiB), queued
/// reads and writes, and removed entries, which the hash table drops through crossbeam-epoch:
/// an evicted value waits, whole, in a bag of up to 64 deferred drops per thread until the
/// epoch moves on. `tests/heap.rs` checks the total against the allocator.
pub const MOKA_ENTRY_BYTES: usize = 260;

/// The allocator's rounding of the nine fixed allocations of an entry, with glibc's malloc
/// (an 8-byte header, rounded up to 16 bytes, 32 at least): moka's six above (8 + 16 + 16 +
/// 16 + 8 + 8 = 72) and the key's `Arc`, the `LocalEntry`'s and the `Entry`'s (8 + 16 + 16 =
/// 40; see the test that pins those sizes). The rounding of the value's own buffers is not
/// counted (see the module's documentation).
pub const ALLOCATOR_SLACK: usize = 112;

/// Bookkeeping tier 1 pays per entry beyond its key, its `LocalEntry` and the entry itself.
pub const TIER1_ENTRY_OVERHEAD: usize = MOKA_ENTRY_BYTES + ALLOCATOR_SLACK;

/// The bytes a tier-1 entry keeps alive: the key's `Arc` (moka's), the `LocalEntry`'s `Arc`,
/// the `Entry`'s `Arc` with everything it owns, and [`TIER1_ENTRY_OVERHEAD`].
pub fn entry_weight(key: &CacheKey, entry: &Entry) -> u32 {
    let bytes = ARC_COUNTS
        + size_of::<LocalKey>()
        + key.heap_size()
        + ARC_COUNTS
        + size_of::<LocalEntry>()
        + ARC_COUNTS
        + size_of::<Entry>()
        + entry.heap_size()
        + TIER1_ENTRY_OVERHEAD;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// The bytes shared `Bytes` keep beside their buffer (the reference count and the buffer's
/// pointer and capacity, allocated once the bytes are first shared).
const BYTES_SHARED: usize = 32;

/// The bytes a rendered answer keeps alive in tier 1: the key's `Arc`, the answer's `Arc` with
/// its body and dependencies, and [`TIER1_ENTRY_OVERHEAD`].
pub fn answer_weight(answer: &Answer) -> u32 {
    let bytes = ARC_COUNTS
        + size_of::<LocalKey>()
        + ARC_COUNTS
        + size_of::<Answer>()
        + answer.body().len()
        + BYTES_SHARED
        + size_of_val(answer.deps())
        + size_of_val(answer.kinds())
        + TIER1_ENTRY_OVERHEAD;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_count_their_capacity() {
        assert_eq!(String::new().heap_size(), 0);
        let mut s = String::with_capacity(100);
        s.push_str("abc");
        assert_eq!(s.heap_size(), 100);
        assert_eq!(Box::<str>::from("hello").heap_size(), 5);
    }

    #[test]
    fn vectors_count_their_buffer_and_their_elements() {
        let v: Vec<u64> = Vec::with_capacity(10);
        assert_eq!(v.heap_size(), 80);
        let v = vec!["ab".to_string(), "cde".to_string()];
        assert_eq!(v.heap_size(), 2 * size_of::<String>() + 2 + 3);
        let deps = vec![(GenKey::Lead(Uuid::nil()), 7_u64)];
        assert_eq!(deps.heap_size(), size_of::<(GenKey, u64)>());
    }

    #[test]
    fn options_and_arcs() {
        assert_eq!(None::<String>.heap_size(), 0);
        assert_eq!(Some("abcd".to_string()).heap_size(), 4);
        let a = Arc::new("abcd".to_string());
        assert_eq!(a.heap_size(), 16 + size_of::<String>() + 4);
        assert_eq!(Arc::new(5_u64).heap_size(), 24);
    }

    #[test]
    fn fixed_types_own_nothing() {
        assert_eq!(Uuid::new_v4().heap_size(), 0);
        assert_eq!(Utc::now().heap_size(), 0);
        assert_eq!(GenKey::Kind(Kind::Lead).heap_size(), 0);
        let key = CacheKey::History {
            lead: Uuid::nil(),
            limit: 10,
            offset: 0,
        };
        assert_eq!(key.heap_size(), 0);
    }

    #[test]
    fn serde_json_is_built_as_measured() {
        // `arbitrary_precision` would parse this into a string-backed number.
        assert!(serde_json::from_str::<serde_json::Value>("1e400").is_err());
        // `preserve_order` would keep insertion order; a BTreeMap sorts.
        let mut m = serde_json::Map::new();
        m.insert("b".into(), json!(1));
        m.insert("a".into(), json!(2));
        assert_eq!(m.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(size_of::<serde_json::Value>(), 32);
        assert_eq!(btree_node_bytes(24, 32), (632, 728));
    }

    #[test]
    fn json_values() {
        assert_eq!(json!(null).heap_size(), 0);
        assert_eq!(json!(1.5).heap_size(), 0);
        assert_eq!(json!("abc").heap_size(), 3);
        let array = serde_json::Value::Array(vec![json!(1), json!("xy")]);
        assert_eq!(array.heap_size(), 2 * 32 + 2);
        assert_eq!(json!({}).heap_size(), 0);
        // One key or eleven: one whole leaf.
        assert_eq!(json!({"a": 1}).heap_size(), 632 + 1);
        // (Keys copied to their exact length: `format!` over-allocates.)
        let eleven: serde_json::Map<_, _> = (0..11)
            .map(|i| (format!("k{i:02}").as_str().to_owned(), json!(i)))
            .collect();
        assert_eq!(serde_json::Value::Object(eleven).heap_size(), 632 + 11 * 3);
    }

    #[test]
    fn btree_nodes_for_keys_in_order() {
        let nodes = |len| btree_map_bytes(len, 24, 32);
        assert_eq!(nodes(0), 0);
        assert_eq!(nodes(1), 632);
        assert_eq!(nodes(11), 632);
        // 6 | 1 | 5: two leaves under a root.
        assert_eq!(nodes(12), 2 * 632 + 728);
        assert_eq!(nodes(18), 2 * 632 + 728);
        assert_eq!(nodes(19), 3 * 632 + 728);
        // 12 leaves (6 * 11 + 11 separators + 5 = 82 keys) fit one root; one more leaf splits it.
        assert_eq!(nodes(82), 12 * 632 + 728);
        assert_eq!(nodes(89), 13 * 632 + 3 * 728);
    }

    #[test]
    fn fixed_allocation_sizes_behind_the_slack() {
        // ALLOCATOR_SLACK rounds these requests: key Arc 56 -> 64, LocalEntry Arc 80 -> 96,
        // Entry Arc 80 -> 96 (glibc chunks). A change of these sizes calls for a new figure.
        assert_eq!(ARC_COUNTS + size_of::<LocalKey>(), 56);
        assert_eq!(ARC_COUNTS + size_of::<LocalEntry>(), 80);
        assert_eq!(ARC_COUNTS + size_of::<Entry>(), 80);
    }

    #[test]
    fn an_entry_weighs_its_value_and_its_bookkeeping() {
        let entry = Entry {
            value: Value::Text(Arc::new("x".repeat(1000))),
            deps: vec![(GenKey::Kind(Kind::Summary), 1)],
            fresh_until_ms: 0,
            stale_until_ms: 0,
            ttl_ms: 0,
        };
        let key = CacheKey::Summary(Uuid::nil());
        let text = 16 + 24 + 1000;
        let deps = size_of::<(GenKey, u64)>();
        assert_eq!(
            entry_weight(&key, &entry) as usize,
            56 + 80 + 80 + text + deps + TIER1_ENTRY_OVERHEAD
        );
    }
}
