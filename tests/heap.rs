//! The tier-1 measure ([`HeapSize`], [`entry_weight`]) against what the allocator really hands
//! out. A test binary of its own: it installs a counting global allocator (dhat's), and the
//! counts are process-wide, so it holds one test that runs its cases one after another.
//!
//! dhat counts the bytes requested, as `HeapSize` does; the allocator's rounding of each
//! request is outside both (see `ALLOCATOR_SLACK`).

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use hotline::cache::{
    entry_weight, now_ms, CacheKey, Entry, GenKey, HeapSize, Kind, LocalTier, Value,
    ALLOCATOR_SLACK, TIER1_ENTRY_OVERHEAD,
};
use hotline::domain::{
    Channel, Conversation, ConversationBrief, Lead, LeadContext, LeadStatus, Organization, Phone,
};
use serde_json::json;
use uuid::Uuid;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// How far `heap_size` may stray from the bytes the allocator left live. Every case comes out
/// exact today (the table this test prints); the margin is for a dependency that changes how
/// it grows a buffer or shapes a B-tree, not for a field left out (the impls destructure every
/// field, so a new one does not compile until it is counted).
const TOLERANCE: f64 = 0.05;

/// Waits for the test harness's main thread to be done allocating: it sets up its bookkeeping
/// for this test (a few hundred bytes) while the test starts, then sleeps until it ends. The
/// counts are process-wide, so any allocation of another thread would be taken for the case's.
fn settle() {
    let mut last = dhat::HeapStats::get().total_blocks;
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let now = dhat::HeapStats::get().total_blocks;
        if now == last {
            return;
        }
        last = now;
    }
    panic!("something in the process keeps allocating: heap figures would be unreliable");
}

/// Runs `make` and returns what it made, with the bytes and blocks it left allocated.
fn measure<T>(make: impl FnOnce() -> T) -> (T, usize, usize) {
    let before = dhat::HeapStats::get();
    let made = make();
    let after = dhat::HeapStats::get();
    (
        made,
        after.curr_bytes - before.curr_bytes,
        after.curr_blocks - before.curr_blocks,
    )
}

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap()
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x5eed_0000_0000_0000_0000_0000_0000_0000 + n)
}

fn organization() -> Organization {
    Organization {
        id: id(1),
        name: "Acme Dental Group of Minneapolis".to_string(),
        phone_number: Phone::from_stored("+16123241623".to_string()),
        timezone: "America/Chicago".to_string(),
        greeting_template: Some(
            "{greeting}, {first_name}! You've reached {organization_name}. Our front desk is \
             with a patient; this assistant can book, move or cancel your appointment."
                .to_string(),
        ),
        created_at: at(1, 9),
        updated_at: at(2, 9),
    }
}

fn lead() -> Lead {
    Lead {
        id: id(2),
        organization_id: id(1),
        phone_number: Phone::from_stored("+16129782029".to_string()),
        customer_name: Some("Maria Lopez".to_string()),
        email: Some("maria.lopez@example.com".to_string()),
        status: LeadStatus::Qualified,
        notes: Some(
            "Prefers afternoon appointments. Asked twice about whitening prices; sensitive \
             to cold. Insurance: Delta Dental PPO, renewal in September."
                .to_string(),
        ),
        metadata: json!({
            "source": "web_form",
            "tags": ["whitening", "spanish", "returning"],
            "utm": {"campaign": "spring-cleaning-2026", "medium": "cpc", "source": "search"},
            "score": 87,
            "preferred_contact": "sms",
            "consent": {"sms": true, "email": false, "recorded_at": "2026-03-01T09:12:44Z"},
        }),
        created_at: at(1, 10),
        updated_at: at(3, 10),
    }
}

fn summary(n: usize) -> String {
    format!(
        "Call {n}: the caller asked to move her cleaning to a later afternoon slot because of \
         work, confirmed her insurance details (Delta Dental PPO) and asked about the price of \
         whitening after the cleaning. The agent offered Thursday 3:30 pm or Friday 4:15 pm; \
         she took Thursday and asked for a text reminder the day before. She mentioned \
         sensitivity to cold on the lower left side, noted for the hygienist."
    )
}

fn transcript(n: usize) -> serde_json::Value {
    let turns: Vec<serde_json::Value> = (0..12)
        .map(|t| {
            let (role, message) = if t % 2 == 0 {
                (
                    "agent",
                    format!("Turn {t} of call {n}: of course, let me check the schedule for you."),
                )
            } else {
                (
                    "user",
                    format!("Turn {t} of call {n}: I'd like something after three if possible."),
                )
            };
            json!({"role": role, "message": message, "time_in_call_secs": t * 7})
        })
        .collect();
    serde_json::Value::Array(turns)
}

fn conversation(n: usize) -> Conversation {
    Conversation {
        id: id(100 + n as u128),
        lead_id: id(2),
        organization_id: id(1),
        channel: Channel::Voice,
        external_id: Some(format!("conv_{n:04}_01hx7q2w9e8r")),
        summary: Some(summary(n)),
        transcript: Some(transcript(n)),
        started_at: at(4, 9) + Duration::hours(n as i64),
        ended_at: Some(at(4, 9) + Duration::hours(n as i64) + Duration::minutes(4)),
        created_at: at(4, 9) + Duration::hours(n as i64),
    }
}

fn context() -> LeadContext {
    let recent: Vec<ConversationBrief> = (0..5)
        .map(|n| ConversationBrief::from(&conversation(n)))
        .collect();
    LeadContext {
        lead: lead(),
        organization: organization(),
        conversation_count: 12,
        last_contact_at: recent.first().map(|c| c.started_at),
        recent_conversations: recent,
    }
}

fn entry(value: Value, deps: Vec<(GenKey, u64)>) -> Entry {
    let now = now_ms();
    Entry {
        value,
        deps,
        fresh_until_ms: now + 600_000,
        stale_until_ms: now + 3_600_000,
        ttl_ms: 600_000,
    }
}

fn lead_deps() -> Vec<(GenKey, u64)> {
    vec![
        (GenKey::Kind(Kind::Context), 11),
        (GenKey::Lead(id(2)), 22),
        (GenKey::Organization(id(1)), 33),
    ]
}

struct Case {
    name: &'static str,
    key: CacheKey,
    build: fn() -> Entry,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "organization",
            key: CacheKey::Organization(id(1)),
            build: || {
                entry(
                    Value::Organization(Arc::new(organization())),
                    vec![
                        (GenKey::Kind(Kind::Organization), 1),
                        (GenKey::Organization(id(1)), 2),
                    ],
                )
            },
        },
        Case {
            name: "lead with metadata",
            key: CacheKey::Lead(id(2)),
            build: || {
                entry(
                    Value::Lead(Arc::new(lead())),
                    vec![(GenKey::Kind(Kind::Lead), 1), (GenKey::Lead(id(2)), 2)],
                )
            },
        },
        Case {
            name: "context, 5 briefs",
            key: CacheKey::Context(id(2)),
            build: || entry(Value::Context(Arc::new(context())), lead_deps()),
        },
        Case {
            name: "history, 20 transcripts",
            key: CacheKey::History {
                lead: id(2),
                limit: 20,
                offset: 0,
            },
            build: || {
                entry(
                    Value::History(Arc::new((0..20).map(conversation).collect())),
                    vec![(GenKey::Kind(Kind::History), 1), (GenKey::Lead(id(2)), 2)],
                )
            },
        },
        Case {
            name: "unknown caller",
            key: CacheKey::Lead(id(3)),
            build: || {
                entry(
                    Value::MaybeLead(None),
                    vec![(GenKey::Kind(Kind::LeadByPhone), 1)],
                )
            },
        },
    ]
}

fn check(case: &str, how: &str, counted: usize, live: usize) {
    let error = counted as f64 / live.max(1) as f64 - 1.0;
    assert!(
        error.abs() <= TOLERANCE,
        "{case} ({how}): heap_size {counted} bytes, the allocator holds {live} ({:+.1}%)",
        error * 100.0
    );
}

/// Each realistic entry, built as a load builds it and decoded as tier 2 hands it to tier 1.
fn values_weigh_what_they_allocate() {
    eprintln!(
        "{:<24} {:>6} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7} {:>8} {:>8}",
        "case",
        "json",
        "built",
        "measured",
        "blocks",
        "decoded",
        "measured",
        "blocks",
        "weight",
        "old"
    );
    for case in cases() {
        let (built, built_live, built_blocks) = measure(case.build);
        let bytes = built.encode();
        let (decoded, decoded_live, decoded_blocks) =
            measure(|| Entry::decode(&bytes).expect("decodes"));
        assert_eq!(decoded, built);
        // Both are entries on this stack: what they own is their heap.
        let (built_heap, decoded_heap) = (built.heap_size(), decoded.heap_size());
        eprintln!(
            "{:<24} {:>6} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7} {:>8} {:>8}",
            case.name,
            bytes.len(),
            built_heap,
            built_live,
            built_blocks,
            decoded_heap,
            decoded_live,
            decoded_blocks,
            entry_weight(&case.key, &decoded),
            bytes.len() + 256,
        );
        check(case.name, "built", built_heap, built_live);
        check(case.name, "decoded", decoded_heap, decoded_live);
    }
}

/// JSON objects of every size decoded in key order take exactly the B-tree nodes counted.
fn json_objects_weigh_their_nodes() {
    for len in [0, 1, 3, 11, 12, 18, 19, 40, 82, 83, 89, 200, 1000] {
        let object: serde_json::Map<String, serde_json::Value> =
            (0..len).map(|i| (format!("k{i:04}"), json!(i))).collect();
        let text = serde_json::to_string(&object).unwrap();
        let (value, live, _) =
            measure(|| serde_json::from_str::<serde_json::Value>(&text).unwrap());
        assert_eq!(value.heap_size(), live, "an object of {len} keys");
    }
}

/// Tier 1 itself: many entries inserted, the bytes they and moka's nodes hold against the sum of
/// their weights (less the allocator's rounding, which the allocator counts nowhere here).
fn tier_one_holds_what_it_weighs() {
    let tier = LocalTier::new(1 << 40);
    // moka's tables, channels and timer wheel, and this thread's epoch handle: made once.
    for n in 0..64 {
        let key = CacheKey::Lead(Uuid::from_u128(1 << 64 | n));
        tier.insert(key, Arc::new(entry(Value::MaybeLead(None), lead_deps())));
    }
    tier.usage();

    const N: u128 = 20_000;
    let ((weights, (entries, weighted)), live, blocks) = measure(|| {
        let mut weights = 0_usize;
        for n in 0..N {
            let key = CacheKey::Lead(Uuid::from_u128(n));
            let e = entry(Value::MaybeLead(None), lead_deps());
            weights += entry_weight(&key, &e) as usize;
            tier.insert(key, Arc::new(e));
        }
        (weights, tier.usage())
    });
    assert_eq!(entries, 64 + N as u64);
    let requested = weights - N as usize * ALLOCATOR_SLACK;
    let per_entry = |b: usize| b as f64 / N as f64;
    eprintln!(
        "tier 1, {N} small entries: {:.1} bytes and {:.2} blocks live per entry; counted {:.1} \
         (weight {:.1}, of which {TIER1_ENTRY_OVERHEAD} overhead and {ALLOCATOR_SLACK} slack); \
         weighted size {weighted}",
        per_entry(live),
        blocks as f64 / N as f64,
        per_entry(requested),
        per_entry(weights),
    );
    check("tier 1", "small entries", requested, live);
}

/// Filled far past its budget with decoded contexts, tier 1 keeps no more bytes alive than its
/// budget, as the allocator counts them, beyond moka's fixed tables.
fn tier_one_stays_within_its_budget_in_real_bytes() {
    const BUDGET: usize = 4 << 20;
    let bytes = entry(Value::Context(Arc::new(context())), lead_deps()).encode();
    let (empty, empty_live, _) = measure(|| LocalTier::new(BUDGET as u64));
    drop(empty);
    let ((tier, entries, weighted, garbage), live, _) = measure(|| {
        let tier = LocalTier::new(BUDGET as u64);
        for n in 0..3_000 {
            let decoded = Entry::decode(&bytes).expect("decodes");
            tier.insert(CacheKey::Context(Uuid::from_u128(n)), Arc::new(decoded));
        }
        let (entries, weighted) = tier.usage();
        // moka's hash table drops a removed value through crossbeam-epoch: evicted entries wait
        // in this thread's bag of deferred drops (64 of them) or the global queue until the
        // epoch moves on. That is real memory, but bounded by a count of entries, not a share
        // of the budget: it is reported, then collected, and the rest compared.
        let before = dhat::HeapStats::get().curr_bytes;
        for _ in 0..3 {
            crossbeam_epoch::pin().flush();
        }
        let garbage = before.saturating_sub(dhat::HeapStats::get().curr_bytes);
        (tier, entries, weighted, garbage)
    });
    eprintln!(
        "tier 1 with a {BUDGET}-byte budget: {entries} contexts, weighted {weighted}; {live} \
         bytes live, {empty_live} of them an empty tier's; {garbage} more were evicted entries \
         awaiting epoch collection"
    );
    assert!(weighted <= BUDGET as u64);
    assert!(entries > 100, "the budget holds contexts");
    assert!(
        live <= BUDGET + empty_live + FIXED_MOKA_BYTES,
        "tier 1 holds {live} bytes for a {BUDGET}-byte budget"
    );
    drop(tier);
}

/// What moka allocates beyond an empty cache and its entries' own nodes: each of its 64
/// hash-table segments gets an array of 128 bucket pointers at its first entry (64 KiB in
/// all), the timer wheel is made at the first entry that expires (about 8 KiB, measured), and
/// the frequency sketch once the cache is half full (a `u64` per slot, 2 KiB here).
const FIXED_MOKA_BYTES: usize = 96 << 10;

#[test]
fn heap_measure_matches_the_allocator() {
    let _profiler = dhat::Profiler::builder().testing().build();
    settle();
    json_objects_weigh_their_nodes();
    values_weigh_what_they_allocate();
    tier_one_holds_what_it_weighs();
    tier_one_stays_within_its_budget_in_real_bytes();
}
