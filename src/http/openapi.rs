//! The OpenAPI 3.1 document of the whole HTTP API. Every route is registered with
//! `utoipa_axum::routes!`, which takes the path and method from the handler's
//! `#[utoipa::path]`, so the router and the document are built from the same declarations and
//! cannot drift (a plain `Router::route` is refused by clippy, see `clippy.toml`).
//!
//! The request schemas here are written to match what the handlers accept, field by field: a
//! body the document calls valid is accepted, one it calls invalid is refused. What JSON Schema
//! cannot say (that a phone number is one libphonenumber finds valid, that `ended_at` is not
//! before `started_at`) is said in the descriptions, and phone numbers carry the custom format
//! `phone`.

use serde_json::{json, Value};
use utoipa::openapi::schema::{
    AdditionalProperties, AllOfBuilder, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder,
    Ref, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};
use uuid::Uuid;

use crate::admin::{COMMANDS, FILTER_MAX};
use crate::calls::model::{Call, Event};
use crate::domain::{Channel, LeadStatus, LONG_TEXT_MAX, SHORT_TEXT_MAX};

/// The security schemes, by the names operations use in `security(...)`.
pub const ADMIN_TOKEN: &str = "admin_token";
pub const WEBHOOK_SECRET: &str = "webhook_secret";
pub const ELEVENLABS_SIGNATURE: &str = "elevenlabs_signature";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hotline",
        description = "A read-through cache for voice-agent backends: ElevenLabs' webhooks, the \
                       store API, calls and their live events, monitoring and admin messages.",
        license(name = "MIT", identifier = "MIT"),
    ),
    tags(
        (name = "webhooks", description = "ElevenLabs' conversation-initiation and post-call webhooks"),
        (name = "store", description = "Organizations, leads and their conversations"),
        (name = "calls", description = "Calls from ring to hang-up, and their events"),
        (name = "monitoring", description = "Health, metrics, alerts and the dashboard (no personal data)"),
        (name = "admin", description = "Instances and admin messages"),
    ),
    components(schemas(ErrorBody, JsonValue)),
    modifiers(&Security),
)]
pub struct ApiDoc;

/// The three ways a request proves who sent it.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(what))
                    .build(),
            )
        };
        components.add_security_scheme(
            ADMIN_TOKEN,
            bearer("`Authorization: Bearer <ADMIN_TOKEN>`: the store, calls and admin APIs, and cache invalidation."),
        );
        components.add_security_scheme(
            WEBHOOK_SECRET,
            bearer(
                "`Authorization: Bearer <WEBHOOK_SECRET>`: the conversation-initiation webhook.",
            ),
        );
        components.add_security_scheme(
            ELEVENLABS_SIGNATURE,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "ElevenLabs-Signature",
                "`t=<unix seconds>,v0=<hex HMAC-SHA256 of \"<t>.<body>\" with ELEVENLABS_WEBHOOK_SECRET>`",
            ))),
        );
    }
}

/// Every error: `{"error": {"code", "message"}}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// A stable, snake_case code (`not_found`, `invalid_field`, …).
    code: String,
    /// A sentence for a human; never personal data.
    message: String,
}

/// The document as served: the annotated routes, plus the error answers that the layers in
/// front of every handler give (authentication, body limits, the body budget).
pub fn finish(mut doc: Document) -> Value {
    doc.openapi = utoipa::openapi::OpenApiVersion::Version31;
    let mut doc = serde_json::to_value(&doc).expect("the OpenAPI document serialises");
    let error = json!({"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}});
    let answer = |description: &str| json!({"description": description, "content": error});
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for operation in item.values_mut() {
                let Some(operation) = operation.as_object_mut() else {
                    continue;
                };
                // A parameter is a string on the wire: absent, never `null`.
                if let Some(params) = operation
                    .get_mut("parameters")
                    .and_then(Value::as_array_mut)
                {
                    for param in params {
                        not_null(param.pointer_mut("/schema"));
                    }
                }
                let secured = operation
                    .get("security")
                    .and_then(Value::as_array)
                    .is_some_and(|s| !s.is_empty());
                let has_body = operation.contains_key("requestBody");
                let responses = operation
                    .entry("responses")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("responses is an object");
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| answer(description));
                };
                if secured {
                    add("401", "The token or signature is missing or wrong.");
                }
                if has_body {
                    add("400", "The body is not JSON, or not a JSON object.");
                    add("408", "The body did not arrive within `BODY_TIMEOUT_S`.");
                    add("413", "The body is larger than this path takes.");
                    add(
                        "503",
                        "Request bodies held in memory are at `BODY_BUDGET_MB`, or a dependency is down; nothing was changed.",
                    );
                }
            }
        }
    }
    doc
}

/// Drops `null` from a schema's types, and from a `oneOf` of `null` and one other schema.
fn not_null(schema: Option<&mut Value>) {
    let Some(schema) = schema.and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(Value::Array(types)) = schema.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            schema.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(variants)) = schema.get("oneOf") {
        let other: Vec<&Value> = variants
            .iter()
            .filter(|v| v.get("type").and_then(Value::as_str) != Some("null"))
            .collect();
        if other.len() == 1 && variants.len() == 2 {
            let only = other[0].clone();
            schema.remove("oneOf");
            if let Value::Object(only) = only {
                schema.extend(only);
            }
        }
    }
}

// Scalars, as the handlers check them.

/// Unicode's White_Space, which Rust's `str::trim` removes, spelled out so that a schema
/// validator's idea of `\s` does not decide what is blank.
const WHITE_SPACE: &str =
    r"\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

/// `schema`, or null: its type admits null, and so does its `enum` when it has one (a
/// nullable type alone would still refuse a null the enum does not list).
fn or_null(schema: ObjectBuilder) -> ObjectBuilder {
    let mut object = schema.build();
    if let SchemaType::Type(t) = object.schema_type {
        object.schema_type = SchemaType::Array(vec![t, Type::Null]);
    }
    if let Some(values) = &mut object.enum_values {
        values.push(Value::Null);
    }
    object.into()
}

/// Text of at most `max` characters without NUL.
fn text(max: usize) -> ObjectBuilder {
    string()
        .max_length(Some(max))
        .pattern(Some(r"^[^\u0000]*$"))
}

/// Text of at most `max` characters without NUL, not blank.
fn non_blank(max: usize) -> ObjectBuilder {
    string()
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(format!(
            r"^[^\u0000]*[^\u0000{WHITE_SPACE}][^\u0000]*$"
        )))
}

fn phone() -> ObjectBuilder {
    string()
        .format(Some(SchemaFormat::Custom("phone".into())))
        .max_length(Some(64))
        .description(Some(
            "A phone number libphonenumber finds valid: E.164 (`+14155550123`), or national in \
             `DEFAULT_REGION`.",
        ))
        .examples([json!("+14155550123")])
}

fn uuid() -> ObjectBuilder {
    string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
}

fn timestamp() -> ObjectBuilder {
    string().format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
}

fn timezone() -> ObjectBuilder {
    string()
        .enum_values(Some(chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name())))
        .description(Some("An IANA timezone name."))
}

/// What `check_email` takes: one `@` with text before it, a dot inside the domain, no white
/// space; surrounding white space is trimmed first.
fn email() -> ObjectBuilder {
    let ws = WHITE_SPACE;
    text(SHORT_TEXT_MAX).pattern(Some(format!(
        r"^[{ws}]*[^@\u0000{ws}]+@[^@.\u0000{ws}][^@\u0000{ws}]*\.[^@\u0000{ws}]*[^@.\u0000{ws}][{ws}]*$"
    )))
}

fn string_enum(values: &[&str]) -> ObjectBuilder {
    string().enum_values(Some(values.iter().copied()))
}

fn json_value() -> RefOr<Schema> {
    Ref::from_schema_name("JsonValue").into()
}

/// A JSON object whose keys and strings hold no NUL (Postgres and the event streams refuse
/// them).
fn json_object() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(text(usize::MAX)))
        .additional_properties(Some(json_value()))
}

/// Any JSON value without NUL in a key or a string.
pub struct JsonValue;

impl PartialSchema for JsonValue {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(text(usize::MAX))
            .item(ArrayBuilder::new().items(json_value()))
            .item(json_object())
            .description(Some("Any JSON value without NUL in a key or a string."))
            .into()
    }
}

impl ToSchema for JsonValue {}

/// A field of a body: its name, its schema, and whether it is required.
fn field(
    name: &str,
    schema: impl Into<RefOr<Schema>>,
    required: bool,
) -> (&str, RefOr<Schema>, bool) {
    (name, schema.into(), required)
}

/// An object schema of `fields`; unknown fields are refused.
fn closed(fields: Vec<(&str, RefOr<Schema>, bool)>) -> ObjectBuilder {
    let mut object = ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    for (name, schema, required) in fields {
        object = object.property(name, schema);
        if required {
            object = object.required(name);
        }
    }
    object
}

/// Declares a request body schema written with the builders above.
macro_rules! request_schema {
    ($(#[$meta:meta])* $name:ident => $schema:expr) => {
        $(#[$meta])*
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $schema.into()
            }
        }

        impl ToSchema for $name {
            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                schemas.push(("JsonValue".into(), JsonValue::schema()));
            }
        }
    };
}

fn opt_text(max: usize) -> ObjectBuilder {
    or_null(text(max))
}

fn lead_status() -> ObjectBuilder {
    string_enum(
        &LeadStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    )
}

fn channel() -> ObjectBuilder {
    string_enum(&Channel::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>())
}

// Store API bodies.

request_schema! {
    /// A new organization.
    OrganizationCreate => closed(vec![
        field("name", non_blank(SHORT_TEXT_MAX), true),
        field("phone_number", phone(), true),
        field(
            "timezone",
            or_null(
                timezone().description(Some("An IANA timezone name; `UTC` when absent or null.")),
            ),
            false,
        ),
        field("greeting_template", opt_text(LONG_TEXT_MAX), false),
    ])
}

request_schema! {
    /// A change to an organization: absent fields stay as they are; `null` clears
    /// `greeting_template`.
    OrganizationUpdate => closed(vec![
        field("name", non_blank(SHORT_TEXT_MAX), false),
        field("phone_number", phone(), false),
        field("timezone", timezone(), false),
        field("greeting_template", opt_text(LONG_TEXT_MAX), false),
    ])
}

request_schema! {
    /// A new lead.
    LeadCreate => closed(vec![
        field("organization_id", uuid(), true),
        field("phone_number", phone(), true),
        field("customer_name", opt_text(SHORT_TEXT_MAX), false),
        field("email", or_null(email()), false),
        field(
            "status",
            or_null(lead_status().description(Some("`new` when absent or null."))),
            false,
        ),
        field("notes", opt_text(LONG_TEXT_MAX), false),
        field(
            "metadata",
            or_null(json_object().description(Some("`{}` when absent or null."))),
            false,
        ),
    ])
}

request_schema! {
    /// A change to a lead: absent fields stay as they are; `null` clears the optional ones.
    /// `organization_id` cannot change.
    LeadUpdate => closed(vec![
        field("phone_number", phone(), false),
        field("customer_name", opt_text(SHORT_TEXT_MAX), false),
        field("email", or_null(email()), false),
        field("status", lead_status(), false),
        field("notes", opt_text(LONG_TEXT_MAX), false),
        field("metadata", json_object(), false),
    ])
}

request_schema! {
    /// A conversation to record for the lead. `ended_at` may not be before `started_at`.
    ConversationCreate => closed(vec![
        field("channel", channel(), true),
        field(
            "external_id",
            or_null(non_blank(SHORT_TEXT_MAX)),
            false,
        ),
        field("summary", opt_text(LONG_TEXT_MAX), false),
        field("transcript", json_value(), false),
        field("started_at", or_null(timestamp()), false),
        field("ended_at", or_null(timestamp()), false),
    ])
}

request_schema! {
    /// What to invalidate, on every instance: exactly one of the four (the others absent or
    /// null).
    Invalidation => {
        let only = |name: &str, schema: ObjectBuilder| {
            let mut object = ObjectBuilder::new().required(name);
            for other in ["lead_id", "organization_id", "kind", "all"] {
                if other != name {
                    object = object.property(other, ObjectBuilder::new().schema_type(Type::Null));
                }
            }
            object.property(name, schema)
        };
        let kinds: Vec<&str> = crate::cache::Kind::ALL.iter().map(|k| k.as_str()).collect();
        AllOfBuilder::new()
            .item(closed(vec![
                field("lead_id", or_null(uuid()), false),
                field("organization_id", or_null(uuid()), false),
                field("kind", or_null(string_enum(&kinds)), false),
                field(
                    "all",
                    or_null(
                        ObjectBuilder::new()
                            .schema_type(Type::Boolean)
                            .enum_values(Some([true])),
                    ),
                    false,
                ),
            ]))
            .item(
                OneOfBuilder::new()
                    .item(only("lead_id", uuid()))
                    .item(only("organization_id", uuid()))
                    .item(only("kind", string_enum(&kinds)))
                    .item(only(
                        "all",
                        ObjectBuilder::new()
                            .schema_type(Type::Boolean)
                            .enum_values(Some([true])),
                    )),
            )
    }
}

// Calls API bodies.

request_schema! {
    /// A change to a call: `state` is a JSON Merge Patch (RFC 7396) of the call's state (at
    /// most 16 KiB and 32 levels deep once merged); `status` may only end the call.
    CallChange => closed(vec![
        field("state", json_object(), false),
        field("control", string_enum(&["agent", "human"]), false),
        field("status", string_enum(&["ended"]), false),
    ])
}

request_schema! {
    /// An integration's event on a call.
    EventCreate => closed(vec![
        field(
            "type",
            string().pattern(Some(r"^(?!call\.)[a-z][a-z0-9_.]{0,63}$")),
            true,
        ),
        field(
            "data",
            or_null(json_object().description(Some(
                "At most 16 KiB and 32 levels deep; `{}` when absent or null.",
            ))),
            false,
        ),
    ])
}

// Admin bodies.

request_schema! {
    /// An admin message to one instance or all. `log_level` takes `args: {"filter"}`; the
    /// other commands take no arguments.
    MessageCreate => {
        let to = || {
            string()
                .pattern(Some("^[!-~]{1,128}$"))
                .description(Some("`all`, or a live instance's id."))
        };
        let plain: Vec<&str> = COMMANDS.iter().copied().filter(|c| *c != "log_level").collect();
        let no_args = or_null(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .max_properties(Some(0)),
        );
        let filter = closed(vec![field(
            "filter",
            text(FILTER_MAX).description(Some("A `RUST_LOG`-style filter, such as `info,hotline=debug`.")),
            true,
        )]);
        OneOfBuilder::new()
            .examples([json!({"to": "all", "command": "ping"})])
            .item(closed(vec![
                field("to", to(), true),
                field("command", string_enum(&plain), true),
                field("args", no_args, false),
            ]))
            .item(closed(vec![
                field("to", to(), true),
                field("command", string_enum(&["log_level"]), true),
                field("args", filter, true),
            ]))
    }
}

// Answers built as JSON in the handlers, described here.

/// A page of a lead's conversations, newest first.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ConversationPage {
    items: Vec<crate::domain::Conversation>,
    limit: i64,
    offset: i64,
}

/// A lead's conversation context.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LeadContextView {
    lead: crate::domain::Lead,
    organization: crate::domain::Organization,
    conversation_count: i64,
    last_contact_at: Option<chrono::DateTime<chrono::Utc>>,
    recent_conversations: Vec<crate::domain::ConversationBrief>,
    is_returning_customer: bool,
    /// The last contact's date in the organization's timezone (`YYYY-MM-DD`).
    last_contact_date: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LeadSummary {
    lead_id: Uuid,
    summary: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LeadGreeting {
    lead_id: Uuid,
    channel: Channel,
    greeting: String,
}

/// The conversation-initiation answer: every dynamic variable, always.
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub struct InitiationAnswer {
    /// Always `conversation_initiation_client_data`.
    #[serde(rename = "type")]
    #[schema(pattern = "^conversation_initiation_client_data$")]
    kind: String,
    dynamic_variables: DynamicVariables,
    /// Present with `OVERRIDE_FIRST_MESSAGE=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    conversation_config_override: Option<Object>,
}

/// `Object` here: any JSON object.
type Object = serde_json::Map<String, Value>;

#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub struct DynamicVariables {
    customer_name: String,
    lead_id: String,
    lead_status: String,
    organization_name: String,
    is_returning_customer: bool,
    conversation_count: i64,
    last_contact_date: String,
    previous_summary: String,
    greeting: String,
    caller_phone: String,
}

/// A signed post-call event, acknowledged.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PostCallAnswer {
    /// What the event was acknowledged as (`recorded`, `duplicate`, `spooled`, `ignored`, …).
    status: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Liveness {
    #[schema(pattern = "^(ok|draining)$")]
    status: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Health {
    #[schema(pattern = "^(healthy|degraded|unhealthy)$")]
    status: String,
    /// `database`, `redis` and `background`, each with its `status`.
    checks: Object,
    version: String,
    uptime_s: u64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RedisHealth {
    enabled: bool,
    connected: bool,
    #[schema(pattern = "^(closed|open|half_open)$")]
    circuit: String,
    latency_ms: Option<f64>,
    redis_version: Option<String>,
    used_memory_human: Option<String>,
    connected_clients: Option<i64>,
    last_error: Option<String>,
    down_since: Option<String>,
}

/// What was invalidated.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Invalidated {
    invalidated: Object,
    /// Always `all_instances`.
    scope: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AlertView {
    name: String,
    severity: String,
    value: f64,
    threshold: f64,
    since: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Alerts {
    active: Vec<AlertView>,
    recent: Vec<AlertView>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CallList {
    items: Vec<Call>,
    /// How many calls match, beyond the page too.
    count: u64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventList {
    items: Vec<Event>,
}

#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub struct InstanceRecord {
    instance_id: String,
    version: String,
    started_at: String,
    last_seen: String,
    draining: bool,
    #[schema(pattern = "^(up|down|disabled)$")]
    redis: String,
    #[schema(pattern = "^(up|down)$")]
    database: String,
    requests_per_s: f64,
    calls_active: u64,
}

#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub struct InstanceList {
    #[serde(rename = "self")]
    this: String,
    instances: Vec<InstanceRecord>,
    /// `false`: Redis is absent or down, and this instance knows only itself.
    shared: bool,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MessageSent {
    id: Uuid,
    to: String,
    command: String,
    sent_at: String,
    expected: Vec<String>,
    /// `false`: Redis is absent or down, and the message reached this instance alone.
    shared: bool,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MessageView {
    id: Uuid,
    to: String,
    command: String,
    args: Object,
    sent_at: String,
    expected: Vec<String>,
    /// Each instance's ack, by instance id.
    acks: Object,
    /// The expected instances that have not acked yet.
    missing: Vec<String>,
}

/// A field read leniently: any JSON value is taken, and one of another type than expected is
/// ignored.
fn lenient(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::AnyValue)
        .description(Some(description))
}

request_schema! {
    /// The conversation-initiation payload. Only a JSON object is required; its fields are read
    /// leniently (a missing one, or one of another type, is an unknown caller, never an error).
    InitiationBody => ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("caller_id", lenient("The caller's number, as the telephony provider sent it."))
        .property("agent_id", lenient("The ElevenLabs agent."))
        .property("called_number", lenient("The organization's number that was called."))
        .property("call_sid", lenient("Twilio's call id (a string): starts a call."))
        .property("call_id", lenient("A SIP trunk's call id (a string): starts a call."))
}

request_schema! {
    /// A post-call event, as ElevenLabs sends it: any signed JSON object is acknowledged; one
    /// whose `type` is not one hotline acts on is acknowledged as `ignored`.
    PostCallBody => ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("type", lenient("`post_call_transcription` (recorded), `call_initiation_failure` (fails the call), or another (ignored)."))
        .property("event_timestamp", lenient("Unix seconds."))
        .property("data", lenient("The event's data."))
}

/// One server-sent event: its JSON is in `data`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SseEvent {
    /// The event's type (`metrics`, `alert`, `call.started`, …).
    event: Option<String>,
    /// The event's JSON.
    data: String,
    /// The id to resume after (`Last-Event-ID`).
    id: Option<String>,
    retry: Option<u64>,
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// Every schema in `value`, with where it is.
    fn schemas<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a Value)>) {
        match value {
            Value::Object(map) => {
                if map.contains_key("type") {
                    out.push((at.clone(), value));
                }
                for (k, v) in map {
                    schemas(v, format!("{at}/{k}"), out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    schemas(v, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    /// A nullable type with an `enum` refuses null unless the enum lists it, which the
    /// handlers accept: the document would call a valid request invalid.
    #[test]
    fn a_nullable_enum_lists_null() {
        let mut all = Vec::new();
        schemas(crate::http::openapi_document(), String::new(), &mut all);
        let mut nullable_enums = 0;
        for (at, schema) in all {
            let nullable = schema["type"]
                .as_array()
                .is_some_and(|types| types.contains(&Value::from("null")));
            if let (true, Some(values)) = (nullable, schema["enum"].as_array()) {
                nullable_enums += 1;
                assert!(values.contains(&Value::Null), "{at}: enum without null");
            }
        }
        // Invalidation's `kind` and `all`, a new organization's `timezone`, a new lead's `status`.
        assert!(nullable_enums >= 4, "{nullable_enums} nullable enums");
    }
}
