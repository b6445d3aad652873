//! Phone numbers, normalised to E.164 with a maintained library (libphonenumber's metadata).

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use phonenumber::country;
use serde::{Deserialize, Serialize};

/// How many parsed inputs are remembered. Parsing with libphonenumber's metadata costs tens
/// of microseconds (dozens of regular expressions), more than everything else a cached webhook
/// answer does; the numbers a webhook sees repeat (every call names its organization's number,
/// and callers call again), so remembering them pays. TinyLFU admission keeps a flood of
/// one-off inputs from pushing the frequent ones out.
const PARSED_CAPACITY: u64 = 50_000;

type Parsed = moka::sync::Cache<(Region, Box<str>), Result<Phone, PhoneError>>;

fn parsed() -> &'static Parsed {
    static PARSED: OnceLock<Parsed> = OnceLock::new();
    PARSED.get_or_init(|| moka::sync::Cache::new(PARSED_CAPACITY))
}

/// A phone number in E.164 form (`+16129782029`). Only constructed from a number that
/// libphonenumber parses and finds valid, so every `Phone` in the system is comparable by string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, pattern = r"^\+[1-9][0-9]{1,14}$", example = "+14155550123")]
pub struct Phone(String);

/// The region used for numbers written without a country code (`DEFAULT_REGION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Region(country::Id);

impl Default for Region {
    fn default() -> Self {
        Region(country::Id::US)
    }
}

impl FromStr for Region {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        country::Id::from_str(&s.trim().to_ascii_uppercase())
            .map(Region)
            .map_err(|_| {
                format!("`{s}` is not an ISO 3166-1 alpha-2 region code (e.g. US, GB, DE)")
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("phone number is empty")]
    Empty,
    #[error("phone number could not be parsed")]
    Unparsable,
    #[error("phone number is not a valid number")]
    Invalid,
}

impl Phone {
    /// Parses a number written in a common human form (`+1 (612) 978-2029`, `612.978.2029`,
    /// `0044 20 7946 0958`), using `region` when it carries no country code.
    pub fn parse(input: &str, region: Region) -> Result<Phone, PhoneError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(PhoneError::Empty);
        }
        if trimmed.len() > 64 || trimmed.contains('\0') {
            return Err(PhoneError::Unparsable);
        }
        let key = (region, Box::<str>::from(trimmed));
        if let Some(known) = parsed().get(&key) {
            return known;
        }
        let result = Self::parse_uncached(trimmed, region);
        parsed().insert(key, result.clone());
        result
    }

    fn parse_uncached(trimmed: &str, region: Region) -> Result<Phone, PhoneError> {
        let number =
            phonenumber::parse(Some(region.0), trimmed).map_err(|_| PhoneError::Unparsable)?;
        if !phonenumber::is_valid(&number) {
            return Err(PhoneError::Invalid);
        }
        Ok(Phone(
            number.format().mode(phonenumber::Mode::E164).to_string(),
        ))
    }

    /// Reads a caller id as telephony systems send it. Withheld numbers (`Anonymous`,
    /// `Restricted`, empty), SIP URIs without a number and anything else that is not a valid
    /// phone number are an unknown caller: `None`, never an error.
    pub fn from_caller_id(caller_id: &str, region: Region) -> Option<Phone> {
        let mut s = caller_id.trim();
        // SIP URIs: sip:+16129782029@trunk.example.com;user=phone
        for scheme in ["sips:", "sip:", "tel:"] {
            // Compare bytes: slicing the string could split a multi-byte character.
            let prefix = s.as_bytes().get(..scheme.len());
            if prefix.is_some_and(|p| p.eq_ignore_ascii_case(scheme.as_bytes())) {
                s = &s[scheme.len()..];
                break;
            }
        }
        let s = s.split(['@', ';']).next().unwrap_or("");
        if !s.chars().any(|c| c.is_ascii_digit()) {
            return None;
        }
        Phone::parse(s, region).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The bytes its text holds on the heap (for the tier-1 byte budget).
    pub fn heap_capacity(&self) -> usize {
        self.0.capacity()
    }

    /// The number as an integer: its E.164 digits (at most 15, so it always fits).
    pub fn digits(&self) -> u64 {
        self.0
            .bytes()
            .filter(u8::is_ascii_digit)
            .fold(0, |n, d| n * 10 + u64::from(d - b'0'))
    }

    /// Trusts a value read back from the store, where only E.164 strings are written.
    pub fn from_stored(e164: String) -> Phone {
        Phone(e164)
    }

    /// A form safe for logs: the country code and the last two digits.
    pub fn masked(&self) -> String {
        let digits = self.0.len().saturating_sub(1);
        let tail = &self.0[self.0.len().saturating_sub(2)..];
        format!("+…{tail} ({digits} digits)")
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Never prints the number itself, so a `{:?}` in a log line cannot leak it.
impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Phone({})", self.masked())
    }
}

impl<'de> Deserialize<'de> for Phone {
    /// Deserialises stored E.164 values (cache entries, invalidation messages) as the store
    /// reads them: by form, not by today's numbering plan, so that a number written directly
    /// into the database always round-trips. Input from users goes through [`Phone::parse`].
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let digits = s.strip_prefix('+').unwrap_or("");
        if (2..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Phone(s))
        } else {
            Err(serde::de::Error::custom("not an E.164 phone number"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us() -> Region {
        Region::default()
    }

    #[test]
    fn human_forms_normalise_to_e164() {
        for input in [
            "+16129782029",
            "+1 (612) 978-2029",
            "(612) 978-2029",
            "612.978.2029",
            "612 978 2029",
            "1-612-978-2029",
            "  +1 612 978 2029  ",
        ] {
            assert_eq!(
                Phone::parse(input, us()).map(|p| p.to_string()),
                Ok("+16129782029".to_string()),
                "{input}"
            );
        }
    }

    #[test]
    fn region_applies_to_national_numbers_only() {
        let gb: Region = "gb".parse().unwrap();
        assert_eq!(
            Phone::parse("020 7946 0958", gb).unwrap().as_str(),
            "+442079460958"
        );
        assert_eq!(
            Phone::parse("+1 612 978 2029", gb).unwrap().as_str(),
            "+16129782029"
        );
        assert!("XX".parse::<Region>().is_err());
        assert!("".parse::<Region>().is_err());
    }

    #[test]
    fn a_remembered_parse_answers_as_the_first_did_in_its_region() {
        let gb: Region = "GB".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(
                Phone::parse("020 7946 0958", gb).unwrap().as_str(),
                "+442079460958"
            );
            assert!(Phone::parse("020 7946 0958", us()).is_err());
            assert_eq!(Phone::parse("612-555-01", us()), Err(PhoneError::Invalid));
        }
    }

    #[test]
    fn rejects_what_is_not_a_number() {
        assert_eq!(Phone::parse("", us()), Err(PhoneError::Empty));
        assert_eq!(Phone::parse("   ", us()), Err(PhoneError::Empty));
        assert!(Phone::parse("hello", us()).is_err());
        assert!(Phone::parse("123", us()).is_err());
        assert!(Phone::parse("+1 612\0978 2029", us()).is_err());
        assert!(Phone::parse(&"9".repeat(500), us()).is_err());
    }

    #[test]
    fn withheld_and_odd_caller_ids_are_unknown_callers() {
        for id in [
            "Anonymous",
            "anonymous",
            "Restricted",
            "",
            "   ",
            "sip:anonymous@trunk.example.com",
            "unknown",
            "+",
            "0",
        ] {
            assert_eq!(Phone::from_caller_id(id, us()), None, "{id:?}");
        }
    }

    #[test]
    fn sip_uris_with_a_number_are_read() {
        assert_eq!(
            Phone::from_caller_id("sip:+16129782029@trunk.example.com;user=phone", us())
                .unwrap()
                .as_str(),
            "+16129782029"
        );
        assert_eq!(
            Phone::from_caller_id("tel:+1-612-978-2029", us())
                .unwrap()
                .as_str(),
            "+16129782029"
        );
    }

    #[test]
    fn non_ascii_caller_ids_are_unknown_callers_not_panics() {
        for id in ["abcé", "sipé:123", "télé", "\u{1F4DE}", "é"] {
            assert_eq!(Phone::from_caller_id(id, us()), None, "{id:?}");
        }
    }

    #[test]
    fn stored_numbers_round_trip_through_serde_by_form() {
        // A number a newer numbering plan might reject still round-trips as stored.
        let stored = Phone::from_stored("+15550000000".into());
        let json = serde_json::to_string(&stored).unwrap();
        assert_eq!(serde_json::from_str::<Phone>(&json).unwrap(), stored);
        assert!(serde_json::from_str::<Phone>("\"6129782029\"").is_err());
        assert!(serde_json::from_str::<Phone>("\"+1612abc\"").is_err());
    }

    #[test]
    fn debug_and_masked_never_show_the_number() {
        let p = Phone::parse("+16129782029", us()).unwrap();
        let debug = format!("{p:?}");
        assert!(!debug.contains("6129782029"), "{debug}");
        assert!(!p.masked().contains("978"));
        assert!(p.masked().ends_with("(11 digits)"));
    }
}
