//! hotline: a read-through cache service for voice-agent backends.
//!
//! Data flows one way: HTTP handler -> [`lookup`] -> store. The store knows nothing of HTTP.

pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod lookup;
pub mod seed;
pub mod startup;
pub mod store;
pub mod telemetry;
