//! hotline's integration tests: the real app on port 0 against real databases.

mod support;

mod answers;
mod cache;
mod calls;
mod continuity;
mod deploy;
mod drain;
mod embedded;
mod faults;
mod hostile;
mod instances;
mod limits;
mod logging;
mod monitoring;
mod monitoring_load;
mod openapi;
mod outage;
mod panics;
mod seed;
mod startup;
mod store;
mod store_api;
mod validate;
mod webhooks;
