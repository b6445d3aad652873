//! What a change invalidates: the one place that decides it. A change comes from hotline's own
//! writes (the lookup layer, after the commit), from the database's change notifications
//! (writes made around hotline), from an operator (the invalidation endpoint), or from the cache
//! itself when continuity with Redis or the database is in doubt; each becomes a [`Change`],
//! and [`Change::plan`] turns it into generations to bump or remove and tier-1 keys to forget.

use serde::Deserialize;
use uuid::Uuid;

use super::keys::{CacheKey, GenKey, Kind, PhoneTagger};
use crate::domain::{Channel, Lead, Organization, Phone, Region};

/// A change to the data hotline caches.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// An organization's row was created or changed; `phones` holds its numbers before and
    /// after (the same number once when it did not change).
    Organization { id: Uuid, phones: Vec<Phone> },
    /// An organization's row was deleted.
    OrganizationDeleted { id: Uuid, phone: Option<Phone> },
    /// A lead's row was created or changed; `pairs` holds its (organization, phone) before and
    /// after.
    Lead { id: Uuid, pairs: Vec<(Uuid, Phone)> },
    /// A lead's row was deleted, with its conversations: nothing of it may stay in Redis.
    LeadDeleted {
        id: Uuid,
        pair: Option<(Uuid, Phone)>,
    },
    /// A lead's conversations changed (what its context, summary, greeting and history show).
    Conversations { lead: Uuid },
    /// Some of a lead's conversations were deleted: the lead may be gone with them (a cascade),
    /// so its generation is changed only where Redis still has it.
    ConversationsDeleted { lead: Uuid },
    /// Every entry of these kinds.
    Kinds(Vec<Kind>),
    /// Every entry (continuity with Redis or the database is in doubt).
    Everything,
    /// A table was truncated: every entry, and every lead's cached data leaves Redis.
    Truncated { table: String },
}

/// What a change invalidates.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// Generations that get a new value.
    pub bump: Vec<GenKey>,
    /// Generations that get a new value only where Redis has them (never brought back).
    pub bump_present: Vec<GenKey>,
    /// Generations removed from Redis altogether (what named a deleted row). A removed
    /// generation invalidates like a bumped one: an entry stamped with it never matches again.
    pub remove: Vec<GenKey>,
    /// Entries dropped at once (tier 1 here, and their Redis keys for every instance).
    pub forget: Vec<CacheKey>,
    /// Every lead's cached data is deleted from Redis (rows went without being listed).
    pub purge_leads: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.bump.is_empty()
            && self.bump_present.is_empty()
            && self.remove.is_empty()
            && self.forget.is_empty()
    }

    /// Every generation the plan changes.
    pub fn generations(&self) -> impl Iterator<Item = &GenKey> {
        self.bump
            .iter()
            .chain(&self.bump_present)
            .chain(&self.remove)
    }

    fn merge(&mut self, other: Plan) {
        self.bump.extend(other.bump);
        self.bump_present.extend(other.bump_present);
        self.remove.extend(other.remove);
        self.forget.extend(other.forget);
        self.purge_leads |= other.purge_leads;
    }

    fn dedup(mut self) -> Plan {
        for v in [&mut self.bump, &mut self.bump_present, &mut self.remove] {
            v.sort_by_key(GenKey::redis_name);
            v.dedup();
        }
        // A generation both bumped and removed is removed; one bumped both ways is bumped.
        let removed = self.remove.clone();
        self.bump.retain(|g| !removed.contains(g));
        let bumped = self.bump.clone();
        self.bump_present
            .retain(|g| !removed.contains(g) && !bumped.contains(g));
        let mut seen = std::collections::HashSet::new();
        self.forget.retain(|k| seen.insert(k.clone()));
        self
    }
}

impl Change {
    /// What an organization's create or update invalidates.
    pub fn organization(before: &Organization, after: &Organization) -> Change {
        let mut phones = vec![before.phone_number.clone()];
        if after.phone_number != before.phone_number {
            phones.push(after.phone_number.clone());
        }
        Change::Organization {
            id: after.id,
            phones,
        }
    }

    /// What a lead's create or update invalidates.
    pub fn lead(before: &Lead, after: &Lead) -> Change {
        let mut pairs = vec![(before.organization_id, before.phone_number.clone())];
        let now = (after.organization_id, after.phone_number.clone());
        if now != pairs[0] {
            pairs.push(now);
        }
        Change::Lead {
            id: after.id,
            pairs,
        }
    }

    /// What a lead's delete invalidates.
    pub fn lead_deleted(lead: &Lead) -> Change {
        Change::LeadDeleted {
            id: lead.id,
            pair: Some((lead.organization_id, lead.phone_number.clone())),
        }
    }

    /// What a recorded call changed: the lead's conversations, and its phone lookup when the
    /// call created the lead.
    pub fn call_recorded(lead: Uuid, created: Option<(Uuid, Phone)>) -> Change {
        match created {
            Some(pair) => Change::Lead {
                id: lead,
                pairs: vec![pair],
            },
            None => Change::Conversations { lead },
        }
    }

    /// The generations to bump or remove and the entries to forget.
    pub fn plan(&self, tags: &PhoneTagger) -> Plan {
        let lead_phone = |(org, phone): &(Uuid, Phone)| {
            let tag = tags.tag(phone);
            (
                GenKey::LeadPhone(*org, tag),
                CacheKey::LeadByPhone(*org, tag),
            )
        };
        match self {
            Change::Organization { id, phones } => {
                let mut plan = Plan {
                    bump: vec![GenKey::Organization(*id)],
                    forget: vec![CacheKey::Organization(*id)],
                    ..Plan::default()
                };
                for phone in phones {
                    let tag = tags.tag(phone);
                    plan.bump.push(GenKey::OrganizationPhone(tag));
                    plan.forget.push(CacheKey::OrganizationByPhone(tag));
                }
                plan
            }
            Change::OrganizationDeleted { id, phone } => {
                let mut plan = Plan {
                    remove: vec![GenKey::Organization(*id)],
                    forget: vec![CacheKey::Organization(*id)],
                    ..Plan::default()
                };
                if let Some(phone) = phone {
                    let tag = tags.tag(phone);
                    // Bumped, not removed: the number's negative entry must be refused too,
                    // and the next caller of it re-creates the generation anyway.
                    plan.bump.push(GenKey::OrganizationPhone(tag));
                    plan.forget.push(CacheKey::OrganizationByPhone(tag));
                }
                plan
            }
            Change::Lead { id, pairs } => {
                let mut plan = Plan {
                    bump: vec![GenKey::Lead(*id)],
                    forget: lead_derived_keys(*id),
                    ..Plan::default()
                };
                for pair in pairs {
                    let (gen, key) = lead_phone(pair);
                    plan.bump.push(gen);
                    plan.forget.push(key);
                }
                plan
            }
            Change::LeadDeleted { id, pair } => {
                let mut plan = Plan {
                    remove: vec![GenKey::Lead(*id)],
                    forget: lead_derived_keys(*id),
                    ..Plan::default()
                };
                if let Some(pair) = pair {
                    let (gen, key) = lead_phone(pair);
                    plan.remove.push(gen);
                    plan.forget.push(key);
                }
                plan
            }
            Change::Conversations { lead } => Plan {
                bump: vec![GenKey::Lead(*lead)],
                forget: lead_derived_keys(*lead),
                ..Plan::default()
            },
            Change::ConversationsDeleted { lead } => Plan {
                bump_present: vec![GenKey::Lead(*lead)],
                forget: lead_derived_keys(*lead),
                ..Plan::default()
            },
            Change::Kinds(kinds) => Plan {
                bump: kinds.iter().map(|k| GenKey::Kind(*k)).collect(),
                ..Plan::default()
            },
            Change::Everything => Change::Kinds(Kind::ALL.to_vec()).plan(tags),
            Change::Truncated { table } => Plan {
                purge_leads: table != "organizations",
                ..Change::Everything.plan(tags)
            },
        }
    }
}

/// A row change as the database's triggers report it (`migrations/postgres`): ids and phone
/// numbers, nothing else.
#[derive(Debug, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Notification {
    Organization {
        id: Uuid,
        phone: Option<String>,
        old_phone: Option<String>,
        /// Present on a delete.
        #[serde(default)]
        deleted: bool,
    },
    Lead {
        id: Uuid,
        org: Uuid,
        old_org: Option<Uuid>,
        phone: Option<String>,
        old_phone: Option<String>,
    },
    Conversation {
        lead: Uuid,
    },
    /// Deleted leads, in chunks.
    LeadRows {
        rows: Vec<LeadRow>,
    },
    /// The leads whose conversations were deleted, in chunks.
    ConversationLeads {
        leads: Vec<Uuid>,
    },
    /// Too many rows changed in one statement to list them.
    Bulk {
        table: String,
    },
    /// A table was truncated.
    Truncate {
        table: String,
    },
}

#[derive(Debug, Deserialize)]
pub struct LeadRow {
    id: Uuid,
    org: Uuid,
    phone: Option<String>,
}

impl Notification {
    /// The changes a notification reports.
    pub fn changes(self, region: Region) -> Vec<Change> {
        let phone = |p: Option<String>| p.and_then(|p| Phone::parse(&p, region).ok());
        match self {
            Notification::Organization {
                id,
                phone: new,
                old_phone,
                deleted,
            } => {
                if deleted || (new.is_none() && old_phone.is_some()) {
                    return vec![Change::OrganizationDeleted {
                        id,
                        phone: phone(old_phone),
                    }];
                }
                let mut phones: Vec<Phone> = [phone(old_phone), phone(new)]
                    .into_iter()
                    .flatten()
                    .collect();
                phones.dedup();
                vec![Change::Organization { id, phones }]
            }
            Notification::Lead {
                id,
                org,
                old_org,
                phone: new,
                old_phone,
            } => {
                let mut pairs = Vec::new();
                if let Some(p) = phone(old_phone) {
                    pairs.push((old_org.unwrap_or(org), p));
                }
                if let Some(p) = phone(new) {
                    if !pairs.contains(&(org, p.clone())) {
                        pairs.push((org, p));
                    }
                }
                vec![Change::Lead { id, pairs }]
            }
            Notification::Conversation { lead } => vec![Change::Conversations { lead }],
            Notification::LeadRows { rows } => rows
                .into_iter()
                .map(|row| Change::LeadDeleted {
                    id: row.id,
                    pair: phone(row.phone).map(|p| (row.org, p)),
                })
                .collect(),
            Notification::ConversationLeads { leads } => leads
                .into_iter()
                .map(|lead| Change::ConversationsDeleted { lead })
                .collect(),
            Notification::Bulk { table } => {
                let kinds: &[Kind] = match table.as_str() {
                    "organizations" => &[Kind::Organization, Kind::Context, Kind::Greeting],
                    "conversations" => {
                        &[Kind::Context, Kind::Summary, Kind::Greeting, Kind::History]
                    }
                    _ => &Kind::ALL,
                };
                vec![Change::Kinds(kinds.to_vec())]
            }
            Notification::Truncate { table } => vec![Change::Truncated { table }],
        }
    }
}

/// The plan of several changes together.
pub fn plan_all(changes: &[Change], tags: &PhoneTagger) -> Plan {
    let mut plan = Plan::default();
    for change in changes {
        plan.merge(change.plan(tags));
    }
    plan.dedup()
}

/// The kinds whose entries depend on a generation (for the per-kind invalidation counts).
pub fn kinds_of(gen: &GenKey) -> &'static [Kind] {
    match gen {
        GenKey::Kind(k) => match k {
            Kind::Organization => &[Kind::Organization],
            Kind::Lead => &[Kind::Lead],
            Kind::LeadByPhone => &[Kind::LeadByPhone],
            Kind::Context => &[Kind::Context],
            Kind::Summary => &[Kind::Summary],
            Kind::Greeting => &[Kind::Greeting],
            Kind::History => &[Kind::History],
        },
        GenKey::Organization(_) => &[Kind::Organization, Kind::Context, Kind::Greeting],
        GenKey::OrganizationPhone(_) => &[Kind::Organization],
        GenKey::Lead(_) => &[
            Kind::Lead,
            Kind::Context,
            Kind::Summary,
            Kind::Greeting,
            Kind::History,
        ],
        GenKey::LeadPhone(..) => &[Kind::LeadByPhone],
    }
}

/// The tier-1 keys of everything derived from one lead (history pages are covered by the
/// lead's generation instead: there is no listing them).
pub fn lead_derived_keys(lead: Uuid) -> Vec<CacheKey> {
    let mut keys = vec![
        CacheKey::Lead(lead),
        CacheKey::Context(lead),
        CacheKey::Summary(lead),
    ];
    keys.extend(Channel::ALL.iter().map(|c| CacheKey::Greeting(lead, *c)));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(s: &str) -> Phone {
        Phone::parse(s, Region::default()).unwrap()
    }

    #[test]
    fn a_lead_that_moves_invalidates_both_phone_lookups() {
        let tags = PhoneTagger::random();
        let (id, org) = (Uuid::new_v4(), Uuid::new_v4());
        let change = Change::Lead {
            id,
            pairs: vec![(org, phone("+16125550100")), (org, phone("+16125550101"))],
        };
        let plan = change.plan(&tags);
        assert!(plan.bump.contains(&GenKey::Lead(id)));
        assert_eq!(plan.bump.len(), 3, "the lead and both phone pairs");
        assert!(plan.forget.contains(&CacheKey::Context(id)));
        assert!(plan.forget.contains(&CacheKey::LeadByPhone(
            org,
            tags.tag(&phone("+16125550101"))
        )));
        assert!(plan.remove.is_empty());
    }

    #[test]
    fn a_deleted_lead_removes_its_generations_instead_of_bumping_them() {
        let tags = PhoneTagger::random();
        let (id, org) = (Uuid::new_v4(), Uuid::new_v4());
        let p = phone("+16125550100");
        let plan = Change::LeadDeleted {
            id,
            pair: Some((org, p.clone())),
        }
        .plan(&tags);
        assert!(plan.bump.is_empty());
        assert_eq!(
            plan.remove,
            vec![GenKey::Lead(id), GenKey::LeadPhone(org, tags.tag(&p))]
        );
    }

    #[test]
    fn everything_bumps_every_kind_and_plans_merge_without_repeats() {
        let tags = PhoneTagger::random();
        let id = Uuid::new_v4();
        let plan = plan_all(
            &[
                Change::Conversations { lead: id },
                Change::Conversations { lead: id },
                Change::Everything,
            ],
            &tags,
        );
        assert_eq!(plan.bump.len(), Kind::ALL.len() + 1);
        assert_eq!(plan.forget.len(), lead_derived_keys(id).len());
    }

    fn notified(json: &str) -> Plan {
        let n: Notification = serde_json::from_str(json).unwrap();
        plan_all(&n.changes(Region::default()), &PhoneTagger::random())
    }

    #[test]
    fn notifications_map_to_the_same_plans_as_writes() {
        let (id, org) = (Uuid::new_v4(), Uuid::new_v4());
        let plan = notified(&format!(
            r#"{{"t":"lead","id":"{id}","org":"{org}","old_org":"{org}","phone":"+16129782029","old_phone":"+16129782030"}}"#
        ));
        assert!(plan.bump.contains(&GenKey::Lead(id)));
        assert_eq!(plan.bump.len(), 3, "the lead and both phone pairs");
        assert!(plan.forget.contains(&CacheKey::Context(id)));

        assert_eq!(
            notified(r#"{"t":"bulk","table":"leads"}"#).bump.len(),
            Kind::ALL.len()
        );

        let rows = notified(&format!(
            r#"{{"t":"lead_rows","rows":[{{"id":"{id}","org":"{org}","phone":"+16129782029"}}]}}"#
        ));
        assert_eq!(
            rows.remove.len(),
            2,
            "a deleted lead's generations are removed"
        );
        assert!(rows.forget.contains(&CacheKey::Lead(id)));

        let conv = notified(&format!(r#"{{"t":"conversation","lead":"{id}"}}"#));
        assert_eq!(conv.bump, vec![GenKey::Lead(id)]);

        let truncated = notified(r#"{"t":"truncate","table":"leads"}"#);
        assert!(truncated.purge_leads);
        assert_eq!(truncated.bump.len(), Kind::ALL.len());
        assert!(!notified(r#"{"t":"truncate","table":"organizations"}"#).purge_leads);
    }

    #[test]
    fn phone_tags_never_show_the_number_and_depend_on_the_key() {
        let p = phone("+16125550100");
        let (a, b) = (PhoneTagger::random(), PhoneTagger::random());
        let tag = a.tag(&p);
        assert_eq!(tag, a.tag(&p), "stable for one key");
        assert_ne!(tag, b.tag(&p), "keyed");
        let name = GenKey::LeadPhone(Uuid::nil(), tag).redis_name();
        assert!(!name.contains("6125550100"), "{name}");
        let json = serde_json::to_string(&GenKey::OrganizationPhone(tag)).unwrap();
        assert!(!json.contains("6125550100"), "{json}");
        let back: GenKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back, GenKey::OrganizationPhone(tag));
    }
}
