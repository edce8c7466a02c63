//! Per-entity event-time window state and batch feature building (see docs/features.md).
//!
//! [`FeatureEngine::process`] takes one batch of input columns and returns one `f32` row per
//! event. State is kept per entity kind (cards, merchants, users), each sharded by the
//! high bits of `mix64(key)`. A batch is split per kind and shard with a stable counting sort
//! of row indices, so every shard sees its events in arrival order. The shards of all three
//! kinds are then processed in parallel on a rayon pool, each by exactly one worker: shard `s`
//! of every kind always goes to worker `s mod threads`, so an entity's memory is allocated,
//! reallocated and freed by one thread (no allocator contention) and stays in that core's
//! cache. Each shard writes its results into its own contiguous block of a per-kind buffer
//! (rows in partition order); a parallel gather then assembles the output rows. No locks or
//! atomics are taken per event.

mod card;
pub mod config;
mod merchant;
pub(crate) mod snapshot;
mod store;
mod user;

use std::cell::RefCell;
use std::sync::Mutex;

use rayon::prelude::*;

use crate::error::{TxError, TxResult};
use card::{Card, CardEvent, CardParams, CardScratch};
use config::{max_window, Layout, BASE_COLUMNS};
pub use config::{window_suffix, EngineConfig};
use merchant::{Merchant, MerchantParams};
use snapshot::{Reader, Writer};
use store::{prefetch, shard_of, EntityTable, Keyed};
use user::{User, UserParams, UserScratch};

pub use card::{haversine_km, EARTH_RADIUS_KM, MIN_SIGMA, MIN_TRAVEL_MS};

/// Version of the feature set (names, order, definitions, default windows).
pub const FEATURE_VERSION: &str = "txfast-features/1";

/// One batch of input columns, all of the same length (see docs/features.md, "Inputs").
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    /// Event time, epoch milliseconds UTC.
    pub ts_ms: &'a [i64],
    /// `hash_id(card_id)`.
    pub card: &'a [u64],
    /// Amount in the base currency, positive and finite.
    pub amount: &'a [f64],
    /// `hash_id(merchant_id)`.
    pub merchant: &'a [u64],
    /// `hash_id(user_id)`, 0 when absent.
    pub user: &'a [u64],
    /// `hash_id(merchant_category)`, 0 when absent.
    pub category: &'a [u64],
    /// `hash_id(country)`, 0 when absent.
    pub country: &'a [u64],
    /// Latitude in degrees, NaN when absent.
    pub lat: &'a [f64],
    /// Longitude in degrees, NaN when absent.
    pub lon: &'a [f64],
    /// Channel code.
    pub channel: &'a [u8],
}

impl Columns<'_> {
    /// Number of rows; an input error if the columns differ in length or a value is invalid.
    pub fn validate(&self) -> TxResult<usize> {
        let n = self.ts_ms.len();
        let lengths = [
            ("card", self.card.len()),
            ("amount", self.amount.len()),
            ("merchant", self.merchant.len()),
            ("user", self.user.len()),
            ("category", self.category.len()),
            ("country", self.country.len()),
            ("lat", self.lat.len()),
            ("lon", self.lon.len()),
            ("channel", self.channel.len()),
        ];
        for (name, len) in lengths {
            if len != n {
                return Err(TxError::Input(format!(
                    "column {name} has {len} rows, ts_ms has {n}"
                )));
            }
        }
        if n >= u32::MAX as usize {
            return Err(TxError::Input(format!(
                "a batch holds at most {} rows, got {n}",
                u32::MAX - 1
            )));
        }
        for i in 0..n {
            let a = self.amount[i];
            let a32 = a as f32;
            if !(a32.is_finite() && a32 > 0.0) {
                return Err(TxError::Input(format!(
                    "row {i}: amount must be positive and finite as float32, got {a}"
                )));
            }
            if self.lat[i].is_nan() != self.lon[i].is_nan() {
                return Err(TxError::Input(format!(
                    "row {i}: lat and lon must be both present or both NaN"
                )));
            }
        }
        Ok(n)
    }
}

/// Counts and memory of the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Number of card entities.
    pub cards: usize,
    /// Number of merchant entities.
    pub merchants: usize,
    /// Number of user entities.
    pub users: usize,
    /// Retained card events.
    pub card_events: usize,
    /// Retained merchant events.
    pub merchant_events: usize,
    /// Retained user events.
    pub user_events: usize,
    /// Heap bytes of all state: slabs, hash indexes (all slots), per-entity buffers at their
    /// capacity, each allocation rounded to its malloc chunk size.
    pub state_bytes: usize,
    /// Part of `state_bytes` held by cards.
    pub card_bytes: usize,
    /// Part of `state_bytes` held by merchants.
    pub merchant_bytes: usize,
    /// Part of `state_bytes` held by users.
    pub user_bytes: usize,
}

impl std::ops::Add for Stats {
    type Output = Stats;
    fn add(self, o: Stats) -> Stats {
        Stats {
            cards: self.cards + o.cards,
            merchants: self.merchants + o.merchants,
            users: self.users + o.users,
            card_events: self.card_events + o.card_events,
            merchant_events: self.merchant_events + o.merchant_events,
            user_events: self.user_events + o.user_events,
            state_bytes: self.state_bytes + o.state_bytes,
            card_bytes: self.card_bytes + o.card_bytes,
            merchant_bytes: self.merchant_bytes + o.merchant_bytes,
            user_bytes: self.user_bytes + o.user_bytes,
        }
    }
}

thread_local! {
    static CARD_SCRATCH: RefCell<CardScratch> = RefCell::new(CardScratch::default());
    static USER_SCRATCH: RefCell<UserScratch> = RefCell::new(UserScratch::default());
}

/// Row indices of a batch grouped by shard, arrival order kept within each shard.
struct Partition {
    /// Shard `s` holds positions `offsets[s]..offsets[s + 1]`.
    offsets: Vec<u32>,
    /// Row at each position.
    order: Vec<u32>,
    /// Position of each row (`u32::MAX` for rows left out).
    rank: Vec<u32>,
}

impl Partition {
    /// Stable counting sort of rows by `shard_of(key)`; rows with key 0 are left out when
    /// `skip_zero`.
    fn new(keys: &[u64], shards: usize, skip_zero: bool) -> Self {
        let shard: Vec<u32> = keys
            .iter()
            .map(|&k| {
                if skip_zero && k == 0 {
                    u32::MAX
                } else {
                    shard_of(k, shards) as u32
                }
            })
            .collect();
        let mut offsets = vec![0u32; shards + 1];
        for &s in &shard {
            if s != u32::MAX {
                offsets[s as usize + 1] += 1;
            }
        }
        for i in 0..shards {
            offsets[i + 1] += offsets[i];
        }
        let mut next = offsets.clone();
        let mut order = vec![0u32; offsets[shards] as usize];
        let mut rank = shard;
        for (row, s) in rank.iter_mut().enumerate() {
            if *s != u32::MAX {
                let slot = &mut next[*s as usize];
                order[*slot as usize] = row as u32;
                *s = *slot;
                *slot += 1;
            }
        }
        Partition {
            offsets,
            order,
            rank,
        }
    }

    fn rows(&self, shard: usize) -> &[u32] {
        &self.order[self.offsets[shard] as usize..self.offsets[shard + 1] as usize]
    }
}

/// Distance, in events, between the stages of the prefetch pipeline of a shard loop.
const AHEAD: usize = 4;

/// Prefetch state for the events `AHEAD`, `2 × AHEAD` and `3 × AHEAD` after event `i`: the
/// index slot of the farthest, the slab entry of the middle one and the entity's own buffer
/// of the nearest, so that by the time an event is processed its state is in cache.
#[inline(always)]
fn prefetch_ahead<E: Keyed>(
    table: &EntityTable<E>,
    key_at: impl Fn(usize) -> u64,
    i: usize,
    n: usize,
) {
    if AHEAD == 0 {
        return;
    }
    if i + 3 * AHEAD < n {
        table.prefetch_slot(key_at(i + 3 * AHEAD));
    }
    if i + 2 * AHEAD < n {
        if let Some(e) = table.guess(key_at(i + 2 * AHEAD)) {
            prefetch(e);
        }
    }
    if i + AHEAD < n {
        if let Some(e) = table.peek(key_at(i + AHEAD)) {
            e.prefetch_data();
        }
    }
}

enum Task<'a> {
    Cards(&'a mut EntityTable<Card>, &'a [u32], &'a mut [f32]),
    Merchants(&'a mut EntityTable<Merchant>, &'a [u32], &'a mut [f32]),
    Users(&'a mut EntityTable<User>, &'a [u32], &'a mut [f32]),
}

/// Shared, read-only context of the parallel phase.
struct BatchContext<'a> {
    cols: Columns<'a>,
    card: &'a CardParams,
    merchant: &'a MerchantParams,
    user: &'a UserParams,
}

impl BatchContext<'_> {
    fn run(&self, task: Task<'_>) {
        match task {
            Task::Cards(table, rows, out) => self.run_cards(table, rows, out),
            Task::Merchants(table, rows, out) => self.run_merchants(table, rows, out),
            Task::Users(table, rows, out) => self.run_users(table, rows, out),
        }
    }

    /// Row-local and card columns of `rows`, written to consecutive rows of `out`.
    fn run_cards(&self, table: &mut EntityTable<Card>, rows: &[u32], out: &mut [f32]) {
        let c = &self.cols;
        let width = out.len() / rows.len();
        CARD_SCRATCH.with_borrow_mut(|scratch| {
            for ((i, &r), row) in rows.iter().enumerate().zip(out.chunks_exact_mut(width)) {
                prefetch_ahead(table, |j| c.card[rows[j] as usize], i, rows.len());
                let r = r as usize;
                let t = c.ts_ms[r];
                let amount = c.amount[r] as f32;
                let ms_of_day = t.rem_euclid(86_400_000);
                let dow = (t.div_euclid(86_400_000) + 3).rem_euclid(7);
                row[0] = amount;
                row[1] = f64::from(amount).ln_1p() as f32;
                row[2] = (ms_of_day / 3_600_000) as f32;
                row[3] = dow as f32;
                row[4] = if dow >= 5 { 1.0 } else { 0.0 };
                row[5] = f32::from(c.channel[r]);
                let ev = CardEvent {
                    t,
                    amount,
                    merchant: c.merchant[r],
                    category: c.category[r],
                    country: c.country[r],
                    lat: c.lat[r],
                    lon: c.lon[r],
                };
                let key = c.card[r];
                let state = table.get_or_insert_with(key, || Card::new(key));
                card::process(state, &ev, self.card, scratch, &mut row[BASE_COLUMNS..]);
            }
        });
    }

    /// Merchant columns of `rows`, written to consecutive rows of `out`.
    fn run_merchants(&self, table: &mut EntityTable<Merchant>, rows: &[u32], out: &mut [f32]) {
        let c = &self.cols;
        let width = self.merchant.windows.len();
        for ((i, &r), row) in rows.iter().enumerate().zip(out.chunks_exact_mut(width)) {
            prefetch_ahead(table, |j| c.merchant[rows[j] as usize], i, rows.len());
            let r = r as usize;
            let key = c.merchant[r];
            table
                .get_or_insert_with(key, || Merchant::new(key))
                .process(c.ts_ms[r], self.merchant, row);
        }
    }

    /// User columns of `rows`, written to consecutive rows of `out`.
    fn run_users(&self, table: &mut EntityTable<User>, rows: &[u32], out: &mut [f32]) {
        let c = &self.cols;
        let width = self.user.windows.len();
        USER_SCRATCH.with_borrow_mut(|scratch| {
            for ((i, &r), row) in rows.iter().enumerate().zip(out.chunks_exact_mut(width)) {
                prefetch_ahead(table, |j| c.user[rows[j] as usize], i, rows.len());
                let r = r as usize;
                let key = c.user[r];
                table
                    .get_or_insert_with(key, || User::new(key))
                    .process(c.ts_ms[r], c.card[r], self.user, scratch, row);
            }
        });
    }
}

/// Split `buf` into one block per shard of `part` (`cols` values per row).
fn shard_blocks<'a>(part: &Partition, cols: usize, mut buf: &'a mut [f32]) -> Vec<&'a mut [f32]> {
    let mut blocks = Vec::with_capacity(part.offsets.len() - 1);
    for w in part.offsets.windows(2) {
        let (head, rest) = buf.split_at_mut((w[1] - w[0]) as usize * cols);
        blocks.push(head);
        buf = rest;
    }
    blocks
}

/// Sliding-window feature engine: state of every card, merchant and user, and the batch
/// feature builder (see docs/features.md for every definition).
pub struct FeatureEngine {
    config: EngineConfig,
    layout: Layout,
    card: CardParams,
    merchant: MerchantParams,
    user: UserParams,
    cards: Vec<EntityTable<Card>>,
    merchants: Vec<EntityTable<Merchant>>,
    users: Vec<EntityTable<User>>,
    newest: Option<i64>,
    pool: Option<rayon::ThreadPool>,
}

impl std::fmt::Debug for FeatureEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureEngine")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl FeatureEngine {
    /// A new engine with empty state; a config error if `config` is invalid.
    pub fn new(config: EngineConfig) -> TxResult<Self> {
        config.validate()?;
        let pool = match config.threads {
            None => None,
            Some(n) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("txfast-features-{i}"))
                    .build()
                    .map_err(|e| TxError::Config(format!("cannot start {n} threads: {e}")))?,
            ),
        };
        let lateness = config.allowed_lateness_ms;
        let cw = &config.card_windows_ms;
        let longest = (0..cw.len())
            .max_by_key(|&i| (cw[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        let card = CardParams {
            windows: cw.clone(),
            longest,
            retention: cw[longest] + lateness,
        };
        let merchant = MerchantParams {
            windows: config.merchant_windows_ms.clone(),
            retention: max_window(&config.merchant_windows_ms) + lateness,
        };
        let user = UserParams {
            windows: config.user_windows_ms.clone(),
            retention: max_window(&config.user_windows_ms) + lateness,
        };
        let shards = config.shards;
        Ok(FeatureEngine {
            layout: Layout::new(&config),
            card,
            merchant,
            user,
            cards: (0..shards).map(|_| EntityTable::default()).collect(),
            merchants: (0..shards).map(|_| EntityTable::default()).collect(),
            users: (0..shards).map(|_| EntityTable::default()).collect(),
            newest: None,
            pool,
            config,
        })
    }

    /// The configuration (windows, lateness, TTL, shards, threads).
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Column names in output order.
    pub fn feature_names(&self) -> Vec<String> {
        self.config.feature_names()
    }

    /// Number of output columns.
    pub fn width(&self) -> usize {
        self.layout.width
    }

    /// Largest event time processed so far.
    pub fn newest_event_ms(&self) -> Option<i64> {
        self.newest
    }

    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }

    /// Features of a batch as a row-major `n × width()` matrix (see [`Self::process_into`]).
    pub fn process(&mut self, cols: &Columns<'_>) -> TxResult<Vec<f32>> {
        let n = cols.validate()?;
        let mut out = vec![0f32; n * self.layout.width];
        self.process_validated(cols, n, &mut out);
        Ok(out)
    }

    /// Compute the features of a batch into `out` (row-major, `n × width()`), processing the
    /// events in order and adding them to the state. On an input error nothing changes.
    pub fn process_into(&mut self, cols: &Columns<'_>, out: &mut [f32]) -> TxResult<()> {
        let n = cols.validate()?;
        if out.len() != n * self.layout.width {
            return Err(TxError::Input(format!(
                "output has {} cells, expected {n} × {}",
                out.len(),
                self.layout.width
            )));
        }
        self.process_validated(cols, n, out);
        Ok(())
    }

    fn process_validated(&mut self, cols: &Columns<'_>, n: usize, out: &mut [f32]) {
        if n == 0 {
            return;
        }
        let batch_newest = cols.ts_ms.iter().copied().max();
        self.newest = self.newest.max(batch_newest);
        let layout = self.layout;
        let shards = self.config.shards;
        let (nm, nu) = (self.merchant.windows.len(), self.user.windows.len());
        let FeatureEngine {
            card,
            merchant,
            user,
            cards,
            merchants,
            users,
            pool,
            ..
        } = self;
        let mut work = move || {
            let ((pc, pm), pu) = rayon::join(
                || {
                    rayon::join(
                        || Partition::new(cols.card, shards, false),
                        || Partition::new(cols.merchant, shards, false),
                    )
                },
                || Partition::new(cols.user, shards, true),
            );
            let mut card_out = vec![0f32; n * layout.card_cols];
            let mut merchant_out = vec![0f32; n * nm];
            let mut user_out = vec![0f32; pu.order.len() * nu];

            // Shard s of every kind goes to worker s mod threads.
            let threads = rayon::current_num_threads().max(1);
            let mut per_worker: Vec<Vec<Task<'_>>> = (0..threads).map(|_| Vec::new()).collect();
            let blocks = shard_blocks(&pc, layout.card_cols, &mut card_out);
            for (s, (t, block)) in cards.iter_mut().zip(blocks).enumerate() {
                if !block.is_empty() {
                    per_worker[s % threads].push(Task::Cards(t, pc.rows(s), block));
                }
            }
            let blocks = shard_blocks(&pm, nm, &mut merchant_out);
            for (s, (t, block)) in merchants.iter_mut().zip(blocks).enumerate() {
                if !pm.rows(s).is_empty() {
                    per_worker[s % threads].push(Task::Merchants(t, pm.rows(s), block));
                }
            }
            let blocks = shard_blocks(&pu, nu, &mut user_out);
            for (s, (t, block)) in users.iter_mut().zip(blocks).enumerate() {
                if !pu.rows(s).is_empty() {
                    per_worker[s % threads].push(Task::Users(t, pu.rows(s), block));
                }
            }
            let ctx = BatchContext {
                cols: *cols,
                card,
                merchant,
                user,
            };
            // One uncontended lock per worker and batch, to hand each worker its task list.
            let per_worker: Vec<Mutex<Vec<Task<'_>>>> =
                per_worker.into_iter().map(Mutex::new).collect();
            rayon::broadcast(|b| {
                let tasks =
                    std::mem::take(&mut *per_worker[b.index()].lock().expect("not poisoned"));
                for task in tasks {
                    ctx.run(task);
                }
            });

            // Gather the rows.
            const ROWS_PER_CHUNK: usize = 512;
            out.par_chunks_mut(ROWS_PER_CHUNK * layout.width)
                .enumerate()
                .for_each(|(chunk, rows)| {
                    for (i, row) in rows.chunks_exact_mut(layout.width).enumerate() {
                        let r = chunk * ROWS_PER_CHUNK + i;
                        let pos = pc.rank[r] as usize;
                        let cc = layout.card_cols;
                        row[..cc].copy_from_slice(&card_out[pos * cc..(pos + 1) * cc]);
                        let pos = pm.rank[r] as usize;
                        row[layout.merchant_col..layout.user_col]
                            .copy_from_slice(&merchant_out[pos * nm..(pos + 1) * nm]);
                        let user_cols = &mut row[layout.user_col..];
                        match pu.rank[r] {
                            u32::MAX => user_cols.fill(-1.0),
                            pos => {
                                let pos = pos as usize;
                                user_cols.copy_from_slice(&user_out[pos * nu..(pos + 1) * nu]);
                            }
                        }
                    }
                });
        };
        match pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }

    /// Drop every entity whose newest event is older than `watermark_ms − TTL` (TTL of its
    /// kind); `None` uses the largest event time processed so far. Returns how many entities
    /// were dropped.
    pub fn evict_idle(&mut self, watermark_ms: Option<i64>) -> usize {
        let Some(watermark) = watermark_ms.or(self.newest) else {
            return 0;
        };
        let card_before =
            watermark.saturating_sub(self.config.ttl_for(self.card.windows[self.card.longest]));
        let merchant_before =
            watermark.saturating_sub(self.config.ttl_for(max_window(&self.merchant.windows)));
        let user_before =
            watermark.saturating_sub(self.config.ttl_for(max_window(&self.user.windows)));
        let FeatureEngine {
            cards,
            merchants,
            users,
            pool,
            ..
        } = self;
        let mut work = || {
            let c: usize = cards
                .par_iter_mut()
                .map(|t| t.evict(|e| e.summary().1 < card_before))
                .sum();
            let m: usize = merchants
                .par_iter_mut()
                .map(|t| t.evict(|e| e.newest().is_none_or(|n| n < merchant_before)))
                .sum();
            let u: usize = users
                .par_iter_mut()
                .map(|t| t.evict(|e| e.summary().1 < user_before))
                .sum();
            c + m + u
        };
        match pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }

    /// Entity counts, retained events and heap bytes of the state.
    pub fn stats(&self) -> Stats {
        fn kind<E: Keyed + Sync>(
            tables: &[EntityTable<E>],
            measure: impl Fn(&E) -> (usize, usize) + Sync,
        ) -> (usize, usize, usize) {
            tables
                .par_iter()
                .map(|t| {
                    let (mut events, mut bytes) = (0, t.own_heap_bytes());
                    for e in t.iter() {
                        let (n, b) = measure(e);
                        events += n;
                        bytes += b;
                    }
                    (t.len(), events, bytes)
                })
                .reduce(|| (0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
        }
        self.install(|| {
            // The three per-kind shard vectors themselves.
            let shard_vec =
                store::heap_bytes(self.config.shards * std::mem::size_of::<EntityTable<Card>>());
            let (cards, card_events, card_bytes) =
                kind(&self.cards, |e| (e.summary().0, e.heap_bytes()));
            let (merchants, merchant_events, merchant_bytes) =
                kind(&self.merchants, |e| (e.len(), e.heap_bytes()));
            let (users, user_events, user_bytes) =
                kind(&self.users, |e| (e.summary().0, e.heap_bytes()));
            let (card_bytes, merchant_bytes, user_bytes) = (
                card_bytes + shard_vec,
                merchant_bytes + shard_vec,
                user_bytes + shard_vec,
            );
            Stats {
                cards,
                merchants,
                users,
                card_events,
                merchant_events,
                user_events,
                state_bytes: card_bytes + merchant_bytes + user_bytes,
                card_bytes,
                merchant_bytes,
                user_bytes,
            }
        })
    }

    /// Serialise the configuration (threads excepted) and all state (format in `snapshot.rs`).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.buf.extend_from_slice(snapshot::MAGIC);
        w.u32(snapshot::FORMAT_VERSION);
        let c = &self.config;
        w.i64_list(&c.card_windows_ms);
        w.i64_list(&c.merchant_windows_ms);
        w.i64_list(&c.user_windows_ms);
        w.i64(c.allowed_lateness_ms);
        w.u8(u8::from(c.idle_ttl_ms.is_some()));
        w.i64(c.idle_ttl_ms.unwrap_or(0));
        w.u32(c.shards as u32);
        w.u8(u8::from(self.newest.is_some()));
        w.i64(self.newest.unwrap_or(0));
        w.u64(self.cards.iter().map(|t| t.len() as u64).sum());
        for e in self.cards.iter().flat_map(|t| t.iter()) {
            e.write_to(&mut w);
        }
        w.u64(self.merchants.iter().map(|t| t.len() as u64).sum());
        for e in self.merchants.iter().flat_map(|t| t.iter()) {
            e.write_to(&mut w);
        }
        w.u64(self.users.iter().map(|t| t.len() as u64).sum());
        for e in self.users.iter().flat_map(|t| t.iter()) {
            e.write_to(&mut w);
        }
        let sum = snapshot::checksum(&w.buf);
        w.u64(sum);
        w.buf
    }

    /// Rebuild an engine from [`Self::snapshot`] bytes; a snapshot error if they are not a
    /// complete, intact snapshot of a supported format version.
    pub fn restore(bytes: &[u8]) -> TxResult<Self> {
        let mut r = Reader::new(bytes);
        if r.take(4)
            .map_err(|_| TxError::Snapshot("not a txfast snapshot".into()))?
            != snapshot::MAGIC
        {
            return Err(TxError::Snapshot(
                "not a txfast snapshot (bad magic)".into(),
            ));
        }
        let version = r.u32()?;
        if version != snapshot::FORMAT_VERSION {
            return Err(TxError::Snapshot(format!(
                "unsupported format version {version} (this build reads {})",
                snapshot::FORMAT_VERSION
            )));
        }
        if bytes.len() < 16 {
            return Err(TxError::Snapshot("truncated data".into()));
        }
        let (body, trailer) = bytes.split_at(bytes.len() - 8);
        if snapshot::checksum(body) != u64::from_le_bytes(trailer.try_into().expect("8 bytes")) {
            return Err(TxError::Snapshot(
                "checksum mismatch: truncated or corrupted".into(),
            ));
        }
        let mut r = Reader::new(body);
        r.take(8)?;
        let card_windows_ms = r.i64_list()?;
        let merchant_windows_ms = r.i64_list()?;
        let user_windows_ms = r.i64_list()?;
        let allowed_lateness_ms = r.i64()?;
        let has_ttl = r.u8()? != 0;
        let ttl = r.i64()?;
        let shards = r.u32()? as usize;
        let config = EngineConfig {
            card_windows_ms,
            merchant_windows_ms,
            user_windows_ms,
            allowed_lateness_ms,
            idle_ttl_ms: has_ttl.then_some(ttl),
            shards,
            threads: None,
        };
        let mut engine = FeatureEngine::new(config)
            .map_err(|e| TxError::Snapshot(format!("bad configuration: {e}")))?;
        let has_newest = r.u8()? != 0;
        let newest = r.i64()?;
        engine.newest = has_newest.then_some(newest);

        let n = r.count(36)?;
        let mut parts: Vec<Vec<Card>> = (0..shards).map(|_| Vec::new()).collect();
        let mut scratch = CardScratch::default();
        for _ in 0..n {
            let e = Card::read_from(&mut r, &mut scratch)?;
            parts[shard_of(e.key(), shards)].push(e);
        }
        engine.cards = collect_tables(parts, "card")?;

        let n = r.count(20)?;
        let mut parts: Vec<Vec<Merchant>> = (0..shards).map(|_| Vec::new()).collect();
        for _ in 0..n {
            let e = Merchant::read_from(&mut r)?;
            parts[shard_of(e.key(), shards)].push(e);
        }
        engine.merchants = collect_tables(parts, "merchant")?;

        let n = r.count(12)?;
        let mut parts: Vec<Vec<User>> = (0..shards).map(|_| Vec::new()).collect();
        let mut scratch = UserScratch::default();
        for _ in 0..n {
            let e = User::read_from(&mut r, &mut scratch)?;
            parts[shard_of(e.key(), shards)].push(e);
        }
        engine.users = collect_tables(parts, "user")?;
        if !r.is_at_end() {
            return Err(TxError::Snapshot("unexpected data after the state".into()));
        }
        Ok(engine)
    }
}

fn collect_tables<E: Keyed>(parts: Vec<Vec<E>>, kind: &str) -> TxResult<Vec<EntityTable<E>>> {
    parts
        .into_iter()
        .map(|p| {
            EntityTable::from_entities(p)
                .ok_or_else(|| TxError::Snapshot(format!("duplicate {kind} key")))
        })
        .collect()
}

#[cfg(test)]
mod tests;
