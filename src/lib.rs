//! hotline: a read-through cache service for voice-agent backends.
//!
//! Data flows one way: HTTP handler -> [`lookup`] -> [`cache`] tiers -> [`store`]. Handlers
//! never touch Redis or SQL; the store knows nothing of the cache; the cache nothing of HTTP.

pub mod admin;
pub mod bench;
pub mod cache;
pub mod calls;
pub mod cli;
pub mod config;
pub mod domain;
pub mod drain;
pub mod http;
pub mod instances;
pub mod lookup;
pub mod monitoring;
pub mod postcall;
pub mod seed;
pub mod spool;
pub mod startup;
pub mod store;
pub mod supervise;
pub mod telemetry;
pub mod validate;
