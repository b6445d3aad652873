pub mod app;
pub mod browser;
pub mod counting;
pub mod db;
pub mod hook;
pub mod infra;
pub mod raw;
pub mod sse;
