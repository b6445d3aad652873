//! Rendered webhook answers: the finished bytes of a conversation-initiation answer for one
//! (called number, caller) pair, kept in tier 1 with the generations of every entry it was built
//! from. A warm call then costs one tier-1 lookup and one check of its stamp, instead of three
//! lookups and a render; a write to anything it shows moves one of those generations, and the
//! answer is not served again.

use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

use super::entry::{now_ms, Entry};
use super::keys::{GenKey, Kind};
use super::mirror::Stamp;
use crate::domain::Phone;

/// Which answer: the called number and the caller (0 for none), as their E.164 digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AnswerKey {
    called: u64,
    caller: u64,
}

impl AnswerKey {
    pub fn new(called: &Phone, caller: Option<&Phone>) -> AnswerKey {
        AnswerKey {
            called: called.digits(),
            caller: caller.map_or(0, Phone::digits),
        }
    }
}

/// A rendered answer and what it depends on.
#[derive(Debug)]
pub struct Answer {
    body: Bytes,
    /// Every generation of every entry it was rendered from.
    deps: Box<[(GenKey, u64)]>,
    /// The kinds of those entries (a hit counts as a tier-1 hit of each).
    kinds: Box<[Kind]>,
    /// Served until then at most: the first of its entries' refresh points (so that refresh
    /// ahead still happens) and the moment its greeting's time of day changes.
    valid_until_ms: i64,
    /// The lead it shows, if any.
    lead: Option<Uuid>,
    /// The organization called, if known.
    organization: Option<Uuid>,
    pub(super) inserted: Instant,
    pub(super) stamp: Stamp,
    /// Its weight in tier 1's byte budget (see [`super::heap::answer_weight`]).
    pub(super) weight: u32,
}

impl Answer {
    /// An answer rendered from `entries`, valid until `valid_until_ms` at most; `None` when it
    /// would not be valid for any time at all.
    pub fn new(
        body: Bytes,
        entries: &[&Entry],
        valid_until_ms: i64,
        lead: Option<Uuid>,
        organization: Option<Uuid>,
    ) -> Option<Answer> {
        let mut deps: Vec<(GenKey, u64)> = entries
            .iter()
            .flat_map(|e| e.deps.iter().cloned())
            .collect();
        deps.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        deps.dedup();
        // Every loaded entry depends on its kind's generation (see `Cache::load_and_fill`).
        let kinds: Vec<Kind> = deps
            .iter()
            .filter_map(|(k, _)| match k {
                GenKey::Kind(kind) => Some(*kind),
                _ => None,
            })
            .collect();
        let valid_until_ms = entries
            .iter()
            .map(|e| e.refresh_at_ms())
            .fold(valid_until_ms, i64::min);
        if valid_until_ms <= now_ms() {
            return None;
        }
        let mut answer = Answer {
            body,
            deps: deps.into_boxed_slice(),
            kinds: kinds.into_boxed_slice(),
            valid_until_ms,
            lead,
            organization,
            inserted: Instant::now(),
            stamp: Stamp::default(),
            weight: 0,
        };
        answer.weight = super::heap::answer_weight(&answer);
        Some(answer)
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub fn deps(&self) -> &[(GenKey, u64)] {
        &self.deps
    }

    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    pub fn lead(&self) -> Option<Uuid> {
        self.lead
    }

    pub fn organization(&self) -> Option<Uuid> {
        self.organization
    }

    pub fn is_fresh(&self, now_ms: i64) -> bool {
        now_ms < self.valid_until_ms
    }

    pub(super) fn expires_in(&self) -> Duration {
        Duration::from_millis((self.valid_until_ms - now_ms()).max(0) as u64)
    }
}
