//! tidings-core: what every stage and backend shares.
//!
//! - [`model`]: domain types (tenants, requests, deliveries, inbox rows, templates)
//! - [`config`]: the typed configuration and its `TIDINGS_*` overrides
//! - [`error`]: the classified error type; [`http`] turns it into JSON error bodies
//! - [`bus`], [`store`], [`presence`]: the three ports, each a documented trait
//! - [`stage`]: the stage runner, the one consumer loop of every stage; [`backoff`]: the one
//!   retry policy
//! - `conformance`: the test suites every backend of a port must pass, one function per
//!   guarantee (feature `testsuite`, enabled by the backends' tests only)
//! - [`template`]: minijinja rendering; [`auth`]: API keys and user JWTs
//! - [`egress`]: which addresses tidings may connect to for a tenant (SSRF guard)
//! - [`seq`]: inbox sequences numbered by their writer, and the floor reads stop below
//! - [`hint`]: marks a task's writes urgent, so backends may let them overtake bulk writes
//! - [`cache`]: a bounded cache of tenant and template reads
//! - [`metrics_names`]: every metric name, declared once

pub mod auth;
pub mod backoff;
pub mod bus;
pub mod cache;
pub mod config;
#[cfg(feature = "testsuite")]
pub mod conformance;
pub mod egress;
pub mod error;
pub mod hint;
pub mod http;
pub mod metrics_names;
pub mod model;
pub mod presence;
pub mod seq;
pub mod stage;
pub mod store;
pub mod template;

pub use error::{Error, ErrorKind, Result};

use std::sync::Arc;

/// The ports and configuration a stage runs with. Stages see only the traits, never which
/// backend is behind them.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<config::Config>,
    pub bus: Arc<dyn bus::Bus>,
    pub store: Arc<dyn store::Store>,
    pub presence: Arc<dyn presence::Presence>,
    /// Bounded rendering of tenant templates for the API (previews, saves, sends).
    pub templates: Arc<template::Renderer>,
    /// The router's own renderer: API traffic never stalls routing.
    pub route_templates: Arc<template::Renderer>,
    /// Cached reads of tenants and templates ([`cache`]).
    pub hot: Arc<cache::HotReads>,
    /// This process's inbox sequences ([`seq`]): the router numbers what it writes.
    pub seqs: Arc<seq::Sequencer>,
}

impl Context {
    /// Render a tenant's template for the API under the configured bounds (see [`template`]).
    pub async fn render(
        &self,
        tenant: &str,
        tpl: &model::Template,
        data: &serde_json::Value,
        locale: Option<&str>,
        mode: template::Mode,
    ) -> Result<template::Rendered> {
        self.templates.render(tenant, tpl, data, locale, mode).await
    }

    /// `<prefix>.requests.<priority>`
    pub fn requests_topic(&self, p: model::Priority) -> String {
        self.config.topic(&format!("requests.{}", p.as_str()))
    }

    /// `<prefix>.deliveries.<channel>`, or `<prefix>.deliveries.<channel>.urgent` for urgent
    /// deliveries: a lane of their own, so that they never queue behind a fan-out backlog.
    pub fn deliveries_topic(&self, c: model::Channel, p: model::Priority) -> String {
        match p {
            model::Priority::Urgent => self
                .config
                .topic(&format!("deliveries.{}.urgent", c.as_str())),
            _ => self.config.topic(&format!("deliveries.{}", c.as_str())),
        }
    }

    /// Both delivery topics of a channel, urgent first.
    pub fn delivery_topics(&self, c: model::Channel) -> [String; 2] {
        [
            self.deliveries_topic(c, model::Priority::Urgent),
            self.deliveries_topic(c, model::Priority::Normal),
        ]
    }

    /// `<prefix>.retry.<tier>`
    pub fn retry_topic(&self, tier: &str) -> String {
        self.config.topic(&format!("retry.{tier}"))
    }

    pub fn events_topic(&self) -> String {
        self.config.topic("events")
    }

    pub fn dlq_topic(&self) -> String {
        self.config.topic("dlq")
    }

    /// `<prefix>.audience`: audience pushes and membership changes, read whole by every
    /// delivery node (each in a group of its own), keyed by tenant.
    pub fn audience_topic(&self) -> String {
        self.config.topic("audience")
    }

    /// Record where delivery `d` stands (its user and channel), stamped now.
    pub async fn set_status(
        &self,
        d: &model::Delivery,
        state: model::DeliveryState,
        attempts: u32,
        last_error: Option<String>,
    ) -> Result<()> {
        let status = model::DeliveryStatus::of(d, state, attempts, last_error);
        self.store
            .put_delivery_status(&d.tenant_id, &d.message_id, &[status])
            .await
    }

    /// Send a record a stage cannot handle to `dlq`, prefixed with the reason
    /// (`"<code>: <message>\n"`), so the partition it came from never stalls on it.
    pub async fn dead_letter(&self, record: &bus::Record, err: &Error) -> Result<()> {
        let letter = stage::DeadLetters::letter(&self.dlq_topic(), record, err);
        self.bus.append(vec![letter]).await.map(|_| ())
    }

    /// Every topic the pipeline uses, as the config wants it, for `migrate` and start-up.
    pub fn topic_specs(&self) -> Vec<bus::TopicSpec> {
        let b = &self.config.bus;
        let requests: Vec<String> = model::Priority::ALL
            .iter()
            .map(|p| self.requests_topic(*p))
            .collect();
        self.all_topics()
            .into_iter()
            .map(|name| bus::TopicSpec {
                partitions: if requests.contains(&name) && b.request_partitions > 0 {
                    b.request_partitions
                } else {
                    b.partitions
                },
                name,
                replication: b.replication_factor,
                retention_ms: Some(b.retention_hours * 3600 * 1000),
            })
            .collect()
    }

    /// Every topic the pipeline uses.
    pub fn all_topics(&self) -> Vec<String> {
        let mut t: Vec<String> = model::Priority::ALL
            .iter()
            .map(|p| self.requests_topic(*p))
            .collect();
        t.extend(
            model::Channel::ALL
                .iter()
                .flat_map(|c| self.delivery_topics(*c)),
        );
        t.extend(RETRY_TIERS.iter().map(|tier| self.retry_topic(tier)));
        t.push(self.events_topic());
        t.push(self.dlq_topic());
        t.push(self.audience_topic());
        t.push(self.config.topic("ingest"));
        t
    }
}

/// A named point where a test build (feature `failpoints`) aborts the process when
/// `TIDINGS_FAIL_POINT` names it, as a crash or `kill -9` would; nothing in other builds.
#[inline]
pub fn fail_point(name: &str) {
    if fail_point_armed(name) {
        eprintln!("fail point {name}: aborting");
        std::process::abort();
    }
}

/// A named point where a test build (feature `failpoints`) fails with a permanent error
/// (`fail_point`) when `TIDINGS_FAIL_POINT` names it; `Ok` in other builds.
#[inline]
pub fn fail_point_error(name: &str) -> Result<()> {
    if fail_point_armed(name) {
        return Err(Error::invalid("fail_point", format!("fail point {name}")));
    }
    Ok(())
}

/// Whether `TIDINGS_FAIL_POINT` names `name` in a test build; always false in other builds.
#[inline]
fn fail_point_armed(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    return std::env::var("TIDINGS_FAIL_POINT").is_ok_and(|v| v == name);
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

/// Retry tiers: `short` holds deliveries due within [`SHORT_TIER_MS`], `long` the rest.
pub const RETRY_TIERS: [&str; 2] = ["short", "long"];
pub const SHORT_TIER_MS: u64 = 10_000;
