//! What hotline says about a lead: its conversation context, a bounded summary of recent
//! conversations, and the greeting an agent opens with. Pure functions of stored data and the
//! current time.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::model::{Channel, Conversation, ConversationStats, Lead, Organization};

/// The summary never exceeds this many characters.
pub const SUMMARY_MAX_CHARS: usize = 600;
/// How many conversations the context and the summary look at.
pub const RECENT_CONVERSATIONS: usize = 5;
const SUMMARY_CONVERSATIONS: usize = 3;

/// One conversation as the context shows it (without the transcript).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConversationBrief {
    pub id: Uuid,
    pub channel: Channel,
    pub summary: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

impl From<&Conversation> for ConversationBrief {
    fn from(c: &Conversation) -> Self {
        ConversationBrief {
            id: c.id,
            channel: c.channel,
            summary: c.summary.clone(),
            started_at: c.started_at,
            ended_at: c.ended_at,
        }
    }
}

/// Everything an agent needs to know about a lead before it speaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeadContext {
    pub lead: Lead,
    pub organization: Organization,
    /// Conversations on every channel.
    pub conversation_count: i64,
    pub last_contact_at: Option<DateTime<Utc>>,
    /// The most recent conversations, newest first.
    pub recent_conversations: Vec<ConversationBrief>,
}

impl LeadContext {
    pub fn is_returning(&self) -> bool {
        self.conversation_count > 0
    }

    /// The last contact as a calendar date in the organization's timezone.
    pub fn last_contact_date(&self) -> Option<String> {
        self.last_contact_at.map(|t| {
            t.with_timezone(&self.organization.tz())
                .format("%Y-%m-%d")
                .to_string()
        })
    }
}

/// Assembles a lead's context from its rows. `recent` is newest first.
pub fn build_context(
    lead: Lead,
    organization: Organization,
    stats: ConversationStats,
    recent: &[Conversation],
) -> LeadContext {
    LeadContext {
        lead,
        organization,
        conversation_count: stats.count,
        last_contact_at: stats.last_started_at,
        recent_conversations: recent
            .iter()
            .take(RECENT_CONVERSATIONS)
            .map(ConversationBrief::from)
            .collect(),
    }
}

/// The summaries of the most recent conversations that have one, newest first, each with its
/// date, within [`SUMMARY_MAX_CHARS`]. Empty when there is nothing to say.
pub fn build_summary(recent: &[ConversationBrief]) -> String {
    let parts: Vec<String> = recent
        .iter()
        .filter_map(|c| {
            let s = c.summary.as_deref()?.trim();
            (!s.is_empty())
                .then(|| format!("{} ({}): {}", c.started_at.format("%Y-%m-%d"), c.channel, s))
        })
        .take(SUMMARY_CONVERSATIONS)
        .collect();
    truncate_chars(&parts.join(" | "), SUMMARY_MAX_CHARS)
}

/// Cuts `s` to at most `max` characters, at a character boundary, marking the cut with `…`.
fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.truncate(out.trim_end().len());
    out.push('…');
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeOfDay {
    Morning,
    Afternoon,
    Evening,
}

impl TimeOfDay {
    pub fn at_hour(hour: u32) -> TimeOfDay {
        match hour {
            // Nobody calling at 04:58 has had their evening yet.
            0..=11 => TimeOfDay::Morning,
            12..=16 => TimeOfDay::Afternoon,
            _ => TimeOfDay::Evening,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            TimeOfDay::Morning => "morning",
            TimeOfDay::Afternoon => "afternoon",
            TimeOfDay::Evening => "evening",
        }
    }

    fn salutation(self) -> &'static str {
        match self {
            TimeOfDay::Morning => "Good morning",
            TimeOfDay::Afternoon => "Good afternoon",
            TimeOfDay::Evening => "Good evening",
        }
    }
}

/// The first moment after `now` at which the time of day in `tz` is no longer what it is at
/// `now` (what a greeting says changes then). Every timezone's offset is a whole number of
/// quarter hours, so the change falls on a quarter hour of UTC; daylight-saving jumps are
/// handled by looking at local time after each step.
pub fn next_time_of_day_change(tz: chrono_tz::Tz, now: DateTime<Utc>) -> DateTime<Utc> {
    const QUARTER: i64 = 15 * 60;
    let at = |t: DateTime<Utc>| TimeOfDay::at_hour(t.with_timezone(&tz).hour());
    let current = at(now);
    let start = now.timestamp() - now.timestamp().rem_euclid(QUARTER);
    // The longest stretch of one time of day is 12 hours (evening), plus a DST hour.
    (1..=4 * 14)
        .filter_map(|n| DateTime::<Utc>::from_timestamp(start + n * QUARTER, 0))
        .find(|t| at(*t) != current)
        .unwrap_or(now + chrono::Duration::hours(1))
}

/// The greeting for a caller on a channel.
///
/// With an organization `greeting_template`, its placeholders are filled: `{greeting}` ("Good
/// morning"), `{time_of_day}` ("morning"), `{organization_name}`, `{customer_name}` and
/// `{first_name}` ("there" for an unknown caller). Without one, a known caller is greeted by
/// name with a nod to the last conversation, an unknown one generically. Times of day are the
/// organization's (its timezone); the result is never empty.
pub fn build_greeting(
    organization: Option<&Organization>,
    context: Option<&LeadContext>,
    channel: Channel,
    now: DateTime<Utc>,
) -> String {
    let tz = organization.map(Organization::tz).unwrap_or(chrono_tz::UTC);
    let local = now.with_timezone(&tz);
    let tod = TimeOfDay::at_hour(local.hour());
    let org_name = organization
        .map(|o| o.name.trim())
        .filter(|n| !n.is_empty());
    let full_name = context
        .and_then(|c| c.lead.customer_name.as_deref())
        .map(str::trim)
        .filter(|n| !n.is_empty());
    let first_name = full_name.and_then(|n| n.split_whitespace().next());

    if let Some(template) = organization
        .and_then(|o| o.greeting_template.as_deref())
        .filter(|t| !t.trim().is_empty())
    {
        let filled = template
            .replace("{greeting}", tod.salutation())
            .replace("{time_of_day}", tod.word())
            .replace("{organization_name}", org_name.unwrap_or("us"))
            .replace("{customer_name}", full_name.unwrap_or("there"))
            .replace("{first_name}", first_name.unwrap_or("there"));
        let filled = filled.trim();
        if !filled.is_empty() {
            return filled.to_string();
        }
    }

    let last_contact = context.and_then(|c| c.last_contact_at).map(|t| {
        let d = t.with_timezone(&tz);
        format!("{} {}", month_name(d.month()), d.day())
    });
    let known = context.is_some();
    let salutation = tod.salutation();
    let who = match first_name {
        Some(n) => format!("{salutation}, {n}"),
        None => salutation.to_string(),
    };
    match channel {
        Channel::Voice => {
            let at = org_name.map(|n| format!(" {n}")).unwrap_or_default();
            match (known, last_contact) {
                (true, Some(date)) => format!(
                    "{who}! Thanks for calling{at} again; we last spoke on {date}. How can I help you today?"
                ),
                (true, None) => format!("{who}! Thanks for calling{at} again. How can I help you today?"),
                (false, _) => format!("{salutation}, thank you for calling{at}! How can I help you today?"),
            }
        }
        Channel::Sms => {
            let from = org_name.map(|n| format!(", it's {n}")).unwrap_or_default();
            match (first_name, known) {
                (Some(n), _) => {
                    format!("Hi {n}{from}! Good to hear from you again. How can we help?")
                }
                (None, true) => format!("Hi{from}! Good to hear from you again. How can we help?"),
                (None, false) => format!("Hi{from}! Thanks for your message. How can we help?"),
            }
        }
        Channel::Chat => {
            let to = org_name.map(|n| format!(" to {n}")).unwrap_or_default();
            if known {
                format!("{who}! Welcome back{to}. How can we help you today?")
            } else {
                format!("{salutation}! Welcome{to}. How can we help you today?")
            }
        }
        Channel::Email => {
            let dear = match full_name {
                Some(n) => format!("Dear {n},"),
                None => "Hello,".to_string(),
            };
            let org = org_name.map(|n| format!(" {n}")).unwrap_or_default();
            let again = if known { " again" } else { "" };
            format!("{dear}\n\nThank you for getting in touch with{org}{again}.")
        }
    }
}

fn month_name(month: u32) -> &'static str {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    MONTHS[(month.clamp(1, 12) - 1) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LeadStatus, Phone, Region};
    use chrono::TimeZone;

    fn org(tz: &str, template: Option<&str>) -> Organization {
        Organization {
            id: Uuid::new_v4(),
            name: "Acme Dental".into(),
            phone_number: Phone::parse("+16123241623", Region::default()).unwrap(),
            timezone: tz.into(),
            greeting_template: template.map(Into::into),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn lead(org: &Organization, name: Option<&str>) -> Lead {
        Lead {
            id: Uuid::new_v4(),
            organization_id: org.id,
            phone_number: Phone::parse("+16129782029", Region::default()).unwrap(),
            customer_name: name.map(Into::into),
            email: None,
            status: LeadStatus::Qualified,
            notes: None,
            metadata: serde_json::json!({}),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn conv(lead: &Lead, day: u32, summary: Option<&str>) -> Conversation {
        let t = Utc.with_ymd_and_hms(2026, 11, day, 15, 0, 0).unwrap();
        Conversation {
            id: Uuid::new_v4(),
            lead_id: lead.id,
            organization_id: lead.organization_id,
            channel: Channel::Voice,
            external_id: None,
            summary: summary.map(Into::into),
            transcript: None,
            started_at: t,
            ended_at: None,
            created_at: t,
        }
    }

    fn context(o: &Organization, name: Option<&str>, convs: &[(u32, Option<&str>)]) -> LeadContext {
        let l = lead(o, name);
        let mut cs: Vec<Conversation> = convs.iter().map(|(d, s)| conv(&l, *d, *s)).collect();
        cs.sort_by_key(|c| std::cmp::Reverse(c.started_at));
        let stats = ConversationStats {
            count: cs.len() as i64,
            last_started_at: cs.first().map(|c| c.started_at),
        };
        build_context(l, o.clone(), stats, &cs)
    }

    /// 14:00 UTC: morning in Chicago (08:00), afternoon in London, evening in Tokyo (23:00).
    fn two_pm_utc() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 14, 0, 0).unwrap()
    }

    #[test]
    fn small_hours_are_morning() {
        for hour in 0..12 {
            assert_eq!(TimeOfDay::at_hour(hour), TimeOfDay::Morning, "{hour}");
        }
        assert_eq!(TimeOfDay::at_hour(12), TimeOfDay::Afternoon);
        assert_eq!(TimeOfDay::at_hour(17), TimeOfDay::Evening);
        assert_eq!(TimeOfDay::at_hour(23), TimeOfDay::Evening);
    }

    #[test]
    fn time_of_day_follows_the_organization_timezone() {
        let now = two_pm_utc();
        let g = |tz| build_greeting(Some(&org(tz, None)), None, Channel::Voice, now);
        assert!(
            g("America/Chicago").starts_with("Good morning"),
            "{}",
            g("America/Chicago")
        );
        assert!(g("Europe/London").starts_with("Good afternoon"));
        assert!(g("Asia/Tokyo").starts_with("Good evening"));
        // A bad timezone written directly into the database falls back to UTC.
        assert!(g("Not/AZone").starts_with("Good afternoon"));
    }

    #[test]
    fn known_caller_is_greeted_by_first_name_with_the_last_contact() {
        let o = org("America/Chicago", None);
        let ctx = context(
            &o,
            Some("Maria Lopez"),
            &[(20, Some("Asked about whitening"))],
        );
        let g = build_greeting(Some(&o), Some(&ctx), Channel::Voice, two_pm_utc());
        assert_eq!(
            g,
            "Good morning, Maria! Thanks for calling Acme Dental again; we last spoke on November 20. How can I help you today?"
        );
    }

    #[test]
    fn unknown_caller_gets_a_generic_greeting_on_every_channel() {
        let o = org("UTC", None);
        for channel in Channel::ALL {
            let g = build_greeting(Some(&o), None, *channel, two_pm_utc());
            assert!(!g.is_empty());
            assert!(g.contains("Acme Dental"), "{channel}: {g}");
            assert!(!g.contains("again"), "{channel}: {g}");
        }
        let g = build_greeting(None, None, Channel::Voice, two_pm_utc());
        assert_eq!(
            g,
            "Good afternoon, thank you for calling! How can I help you today?"
        );
    }

    #[test]
    fn channels_differ_for_a_known_caller() {
        let o = org("UTC", None);
        let ctx = context(&o, Some("Maria Lopez"), &[]);
        let sms = build_greeting(Some(&o), Some(&ctx), Channel::Sms, two_pm_utc());
        let email = build_greeting(Some(&o), Some(&ctx), Channel::Email, two_pm_utc());
        let chat = build_greeting(Some(&o), Some(&ctx), Channel::Chat, two_pm_utc());
        assert_eq!(
            sms,
            "Hi Maria, it's Acme Dental! Good to hear from you again. How can we help?"
        );
        assert!(email.starts_with("Dear Maria Lopez,\n\n"));
        assert!(chat.contains("Welcome back to Acme Dental"));
    }

    #[test]
    fn known_caller_without_a_name() {
        let o = org("UTC", None);
        let ctx = context(&o, Some("   "), &[]);
        let g = build_greeting(Some(&o), Some(&ctx), Channel::Voice, two_pm_utc());
        assert_eq!(
            g,
            "Good afternoon! Thanks for calling Acme Dental again. How can I help you today?"
        );
    }

    #[test]
    fn template_placeholders_are_filled() {
        let o = org(
            "Asia/Tokyo",
            Some("{greeting} {first_name}, {organization_name} here ({time_of_day}). {unknown}"),
        );
        let ctx = context(&o, Some("Maria Lopez"), &[]);
        assert_eq!(
            build_greeting(Some(&o), Some(&ctx), Channel::Voice, two_pm_utc()),
            "Good evening Maria, Acme Dental here (evening). {unknown}"
        );
        assert_eq!(
            build_greeting(Some(&o), None, Channel::Voice, two_pm_utc()),
            "Good evening there, Acme Dental here (evening). {unknown}"
        );
        // A blank template falls back to the built-in greeting.
        let blank = org("UTC", Some("   "));
        assert!(
            build_greeting(Some(&blank), None, Channel::Voice, two_pm_utc())
                .starts_with("Good afternoon")
        );
    }

    #[test]
    fn context_counts_and_dates() {
        let o = org("Asia/Tokyo", None);
        let ctx = context(
            &o,
            Some("Maria"),
            &[(3, None), (20, Some("b")), (11, Some("a"))],
        );
        assert!(ctx.is_returning());
        assert_eq!(ctx.conversation_count, 3);
        // 15:00 UTC on the 20th is already the 21st in Tokyo.
        assert_eq!(ctx.last_contact_date().as_deref(), Some("2026-11-21"));
        assert_eq!(ctx.recent_conversations[0].summary.as_deref(), Some("b"));
        let none = context(&o, Some("Maria"), &[]);
        assert!(!none.is_returning());
        assert_eq!(none.last_contact_date(), None);
    }

    #[test]
    fn summary_is_newest_first_skips_empty_and_is_bounded() {
        let o = org("UTC", None);
        let ctx = context(
            &o,
            None,
            &[
                (1, Some("oldest")),
                (2, Some("  ")),
                (3, None),
                (4, Some("middle")),
                (5, Some("newest")),
            ],
        );
        let s = build_summary(&ctx.recent_conversations);
        assert_eq!(
            s,
            "2026-11-05 (voice): newest | 2026-11-04 (voice): middle | 2026-11-01 (voice): oldest"
        );
        assert_eq!(build_summary(&[]), "");

        let long = "é".repeat(5_000);
        let ctx = context(&o, None, &[(1, Some(long.as_str()))]);
        let s = build_summary(&ctx.recent_conversations);
        assert_eq!(s.chars().count(), SUMMARY_MAX_CHARS);
        assert!(s.ends_with('…'));
    }

    #[test]
    fn the_time_of_day_changes_at_the_organizations_boundaries() {
        let chicago: chrono_tz::Tz = "America/Chicago".parse().unwrap();
        // 11:59:30 in Chicago (CST, UTC-6): afternoon begins at noon.
        let now = Utc.with_ymd_and_hms(2026, 1, 15, 17, 59, 30).unwrap();
        assert_eq!(
            next_time_of_day_change(chicago, now),
            Utc.with_ymd_and_hms(2026, 1, 15, 18, 0, 0).unwrap()
        );
        // Evening from 17:00 to midnight local: 7 hours on.
        let evening = Utc.with_ymd_and_hms(2026, 1, 15, 23, 0, 0).unwrap();
        assert_eq!(
            next_time_of_day_change(chicago, evening),
            Utc.with_ymd_and_hms(2026, 1, 16, 6, 0, 0).unwrap()
        );
        // A half-hour offset: Kolkata is UTC+5:30, so its noon is 06:30 UTC.
        let kolkata: chrono_tz::Tz = "Asia/Kolkata".parse().unwrap();
        let morning = Utc.with_ymd_and_hms(2026, 1, 15, 5, 10, 0).unwrap();
        assert_eq!(
            next_time_of_day_change(kolkata, morning),
            Utc.with_ymd_and_hms(2026, 1, 15, 6, 30, 0).unwrap()
        );
        // Across the spring-forward night in Chicago (02:00 CST becomes 03:00 CDT): from
        // midnight CST, noon CDT is 17:00 UTC, eleven hours on.
        let night = Utc.with_ymd_and_hms(2026, 3, 8, 6, 0, 0).unwrap();
        let change = next_time_of_day_change(chicago, night);
        assert_eq!(change, Utc.with_ymd_and_hms(2026, 3, 8, 17, 0, 0).unwrap());
        assert_eq!(change.with_timezone(&chicago).hour(), 12);
    }
}
