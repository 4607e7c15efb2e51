//! The request handling of a small shop, as a hot module: it prices products for users and
//! renders the pages the service sends back.
//!
//! Every method takes `&self`, so the service's worker threads call it concurrently: the
//! counters are atomics and the price cache sits behind a read-write lock. All of it is
//! carried across reloads (serde saves atomics and locks as their values), so the counts go
//! on and a cached price survives a build that prices the same way. Edit the price rule while
//! the service runs and the next requests are priced by the new build.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use hotreload::hot_module;
use serde::{Deserialize, Serialize};

/// What the shop sells: sku, name, list price in cents.
const CATALOG: &[(&str, &str, u64)] = &[
    ("tea", "Green tea, 100 g", 450),
    ("mug", "Stoneware mug", 1200),
    ("kettle", "Copper kettle", 5900),
    ("teapot", "Cast-iron teapot", 3400),
    ("scarf", "Wool scarf", 2500),
];

/// The price rule this build applies, as the pages name it.
const RULE: &str = "members save 10%";

/// The discount, in percent, for a member or a guest.
fn discount_percent(member: bool) -> u64 {
    if member { 10 } else { 0 } // PRICE RULE
}

/// Users whose id starts with `member-` are members; everyone else is a guest.
fn is_member(user: &str) -> bool {
    user.starts_with("member-")
}

/// How many prices the cache keeps before it starts afresh.
const CACHE_CAPACITY: usize = 4_096;

/// Requests served, per route.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Routes {
    price: AtomicU64,
    catalog: AtomicU64,
    stats: AtomicU64,
}

/// A price as computed under a rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached {
    rule: String,
    cents: u64,
}

/// The module's state, carried from version to version.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Storefront {
    served: AtomicU64,
    routes: Routes,
    /// `<sku>/<member|guest>` to the price last computed for it, under the rule named in it.
    cache: RwLock<BTreeMap<String, Cached>>,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

#[hot_module(version = 1)]
impl Storefront {
    /// The price of `sku` for `user`, as a JSON object; `None` for a product the shop does
    /// not sell.
    pub fn price(&self, user: &str, sku: &str) -> Result<Option<String>, String> {
        let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        self.routes.price.fetch_add(1, Ordering::Relaxed);
        let Some(&(sku, name, list)) = CATALOG.iter().find(|(s, ..)| *s == sku) else {
            return Ok(None);
        };
        let member = is_member(user);
        let cents = self.cached_price(sku, list, member);
        Ok(Some(format!(
            "{{\"sku\":\"{sku}\",\"name\":\"{name}\",\"user\":\"{user}\",\"member\":{member},\
             \"list_cents\":{list},\"cents\":{cents},\"rule\":\"{RULE}\",\"request\":{served}}}"
        )))
    }

    /// The catalog as a text page, with a guest's and a member's price for each product.
    pub fn catalog(&self) -> String {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.routes.catalog.fetch_add(1, Ordering::Relaxed);
        let mut page = format!("Catalog ({RULE})\n");
        for &(sku, name, list) in CATALOG {
            let guest = self.cached_price(sku, list, false);
            let member = self.cached_price(sku, list, true);
            let _ = writeln!(
                page,
                "  {sku:<8} {name:<20} {:>8}  members {:>8}",
                dollars(guest),
                dollars(member)
            );
        }
        page
    }

    /// The counters, as a JSON object.
    pub fn stats(&self) -> String {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.routes.stats.fetch_add(1, Ordering::Relaxed);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let cached = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        format!(
            "{{\"served\":{},\"routes\":{{\"price\":{},\"catalog\":{},\"stats\":{}}},\
             \"cache\":{{\"entries\":{cached},\"hits\":{},\"misses\":{}}},\"rule\":\"{RULE}\"}}",
            load(&self.served),
            load(&self.routes.price),
            load(&self.routes.catalog),
            load(&self.routes.stats),
            load(&self.cache_hits),
            load(&self.cache_misses),
        )
    }
}

impl Storefront {
    /// The price of `sku` (listed at `list` cents) for a member or a guest, from the cache
    /// when it was computed under this build's rule.
    fn cached_price(&self, sku: &str, list: u64, member: bool) -> u64 {
        let key = format!("{sku}/{}", if member { "member" } else { "guest" });
        // A cache is only a cache: a panic elsewhere while it was held leaves it usable.
        let cached = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(hit) = cached.get(&key)
            && hit.rule == RULE
        {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return hit.cents;
        }
        drop(cached);
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
        let cents = list * (100 - discount_percent(member)) / 100;
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        let rule = RULE.to_owned();
        cache.insert(key, Cached { rule, cents });
        cents
    }
}

/// `1234` cents as `$12.34`.
fn dollars(cents: u64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}
