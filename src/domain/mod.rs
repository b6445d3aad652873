//! Pure types and rules: no I/O here.

mod builders;
mod model;
mod phone;

pub use builders::{
    build_context, build_greeting, build_summary, next_time_of_day_change, ConversationBrief,
    LeadContext, TimeOfDay, SUMMARY_MAX_CHARS,
};
pub use model::{
    CallOutcome, CallRecord, Channel, Conversation, ConversationStats, Lead, LeadPatch, LeadStatus,
    NewConversation, NewLead, NewOrganization, Organization, OrganizationPatch,
};
pub use phone::{Phone, PhoneError, Region};

/// The longest text accepted in a short field (names, emails, timezones, external ids).
pub const SHORT_TEXT_MAX: usize = 500;
/// The longest text accepted in a long field (notes, summaries, templates).
pub const LONG_TEXT_MAX: usize = 20_000;

/// Checks a text field: no NUL bytes (Postgres refuses them) and a bounded length.
pub fn check_text(value: &str, max_chars: usize) -> Result<(), String> {
    if value.contains('\0') {
        return Err("must not contain NUL characters".into());
    }
    if value.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    Ok(())
}

/// Checks that a timezone is an IANA name (`Europe/Berlin`, `UTC`).
pub fn check_timezone(value: &str) -> Result<(), String> {
    value
        .parse::<chrono_tz::Tz>()
        .map(|_| ())
        .map_err(|_| "must be an IANA timezone name such as `America/Chicago` or `UTC`".into())
}

/// Checks an email address loosely: one `@` with text on both sides and a dot in the domain.
pub fn check_email(value: &str) -> Result<(), String> {
    check_text(value, SHORT_TEXT_MAX)?;
    let ok = match value.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !value.chars().any(char::is_whitespace)
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err("must be an email address".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_checks() {
        assert!(check_text("fine", 10).is_ok());
        assert!(check_text("a\0b", 10).is_err());
        assert!(check_text("ééééé", 5).is_ok());
        assert!(check_text("ééééé", 4).is_err());
    }

    #[test]
    fn timezone_checks() {
        assert!(check_timezone("UTC").is_ok());
        assert!(check_timezone("America/Chicago").is_ok());
        assert!(check_timezone("Mars/Olympus").is_err());
        assert!(check_timezone("").is_err());
    }

    #[test]
    fn email_checks() {
        assert!(check_email("maria@example.com").is_ok());
        for bad in [
            "",
            "maria",
            "@example.com",
            "maria@",
            "maria@example",
            "a b@c.d",
            "a@b@c.d",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
    }
}
