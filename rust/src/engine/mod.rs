//! Per-entity event-time window state and batch feature building (see docs/features.md).
//!
//! [`FeatureEngine::process`] takes one batch of input columns and returns one `f32` row per
//! event. State is kept per entity kind (cards, merchants, users), each sharded by the
//! high bits of `mix64(key)`. A batch is split per kind and shard with a stable counting sort
//! of row indices, so every shard sees its events in arrival order, and the columns each
//! kind needs are gathered into one contiguous block per shard in that order; the (category,
//! country) pair of every row is interned meanwhile (see `symbols.rs`). The shards are then
//! processed in two parallel phases on a rayon pool, merchants and users first, then cards
//! (which name merchants by the symbols the merchant phase hands over, one relaxed atomic
//! store per event). Each shard is processed by exactly one worker: shard `s` of every kind
//! always goes to worker `s mod threads`, so an entity's memory is allocated, reallocated and
//! freed by one thread (no allocator contention) and stays in that core's cache. Each shard
//! writes its results into its own contiguous block of a per-kind buffer (rows in partition
//! order); a parallel gather then assembles the output rows. No locks are taken per event.

mod card;
pub mod config;
mod labels;
mod merchant;
pub(crate) mod snapshot;
mod store;
mod symbols;
mod user;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;

use crate::error::{TxError, TxResult};
use card::{Card, CardEvent, CardParams, CardScratch, Pairs};
use config::{max_window, Layout, BASE_COLUMNS};
pub use config::{window_suffix, EngineConfig};
pub use labels::LabelColumns;
use labels::{LabelParams, LabelState};
use merchant::{Merchant, MerchantParams};
use snapshot::{Reader, Writer};
use store::{key_hash, shard_of, shard_of_hash, EntityTable, Keyed};
use symbols::Symbols;
use user::{User, UserParams, UserScratch};

pub use card::{haversine_km, EARTH_RADIUS_KM, MIN_SIGMA, MIN_TRAVEL_MS};

/// Version of the feature set (names, order, definitions, default windows).
pub const FEATURE_VERSION: &str = "txfast-features/2";

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
    /// Heap bytes of all state: slabs, hash indexes (all slots), symbol tables, per-entity
    /// buffers at their capacity, each allocation rounded to its malloc chunk size. The
    /// working buffers of a batch, which depend on the batch size only, are not state.
    pub state_bytes: usize,
    /// Part of `state_bytes` held by cards (with the (category, country) pair symbols).
    pub card_bytes: usize,
    /// Part of `state_bytes` held by merchants (with the merchant symbols).
    pub merchant_bytes: usize,
    /// Part of `state_bytes` held by users.
    pub user_bytes: usize,
    /// Merchants and cards with label state.
    pub label_entities: usize,
    /// Retained label known-times (per entity, the longer of its two lists).
    pub labels: usize,
    /// Part of `state_bytes` held by label state.
    pub label_bytes: usize,
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
            label_entities: self.label_entities + o.label_entities,
            labels: self.labels + o.labels,
            label_bytes: self.label_bytes + o.label_bytes,
        }
    }
}

thread_local! {
    static CARD_SCRATCH: RefCell<CardScratch> = RefCell::new(CardScratch::default());
    static USER_SCRATCH: RefCell<UserScratch> = RefCell::new(UserScratch::default());
}

/// One merchant shard: its merchants and the merchant symbols of its keys.
#[derive(Default)]
struct MerchantShard {
    table: EntityTable<Merchant>,
    syms: Symbols<u64>,
}

/// Global symbol of the merchant with local symbol `local` in merchant shard `shard`.
#[inline]
fn global_merchant_sym(local: u32, shard: usize, shards: usize) -> u32 {
    let g = u64::from(local) * shards as u64 + shard as u64;
    assert!(
        g <= u64::from(u32::MAX),
        "too many distinct merchants for 32-bit merchant symbols"
    );
    g as u32
}

/// Input of one event as a shard task reads it: the batch columns it needs, gathered in
/// partition order so that the task reads them sequentially.
trait EventRow {
    /// Entity key.
    fn key(&self) -> u64;
    /// `key_hash` of the key.
    fn hash(&self) -> u64;
}

/// A card event.
#[derive(Clone, Copy)]
struct CardRow {
    key: u64,
    hash: u64,
    t: i64,
    lat: f64,
    lon: f64,
    category: u64,
    country: u64,
    amount: f32,
    /// Pair symbol of (category, country).
    pair: u32,
    channel: u8,
}

/// A merchant event.
#[derive(Clone, Copy)]
struct MerchantRow {
    key: u64,
    hash: u64,
    t: i64,
    /// Batch row.
    row: u32,
}

/// A user event.
#[derive(Clone, Copy)]
struct UserRow {
    key: u64,
    hash: u64,
    t: i64,
    card: u64,
}

macro_rules! event_row {
    ($($t:ty),*) => {$(
        impl EventRow for $t {
            #[inline(always)]
            fn key(&self) -> u64 {
                self.key
            }
            #[inline(always)]
            fn hash(&self) -> u64 {
                self.hash
            }
        }
    )*};
}
event_row!(CardRow, MerchantRow, UserRow);

/// Events of a batch grouped by shard, arrival order kept within each shard.
struct Partition<R> {
    /// Shard `s` holds positions `offsets[s]..offsets[s + 1]`.
    offsets: Vec<u32>,
    /// Position of each row (`u32::MAX` for rows left out).
    rank: Vec<u32>,
    /// Event at each position.
    events: Vec<R>,
}

/// Rows of a batch in shard order (a stable counting sort by `shard_of(key)`).
struct Order {
    offsets: Vec<u32>,
    /// Row at each position.
    order: Vec<u32>,
    /// Position of each row (`u32::MAX` for rows left out).
    rank: Vec<u32>,
    /// `key_hash` of each row's key.
    hash: Vec<u64>,
}

impl Order {
    /// Rows with key 0 are left out when `skip_zero`.
    fn new(keys: &[u64], shards: usize, skip_zero: bool) -> Self {
        let hash: Vec<u64> = keys.iter().map(|&k| key_hash(k)).collect();
        let shard: Vec<u32> = keys
            .iter()
            .zip(&hash)
            .map(|(&k, &h)| {
                if skip_zero && k == 0 {
                    u32::MAX
                } else {
                    shard_of_hash(h, shards) as u32
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
        Order {
            offsets,
            order,
            rank,
            hash,
        }
    }
}

impl<R: Send> Partition<R> {
    /// The rows of `o`, each made into an event by `make(row, hash)` in partition order.
    fn new(o: Order, make: impl FnMut(usize, u64) -> R) -> Self {
        let mut make = make;
        let events = o
            .order
            .iter()
            .map(|&r| make(r as usize, o.hash[r as usize]))
            .collect();
        Partition {
            offsets: o.offsets,
            rank: o.rank,
            events,
        }
    }

    /// [`Partition::new`], the events made in parallel.
    fn par_new(o: Order, make: impl Fn(usize, u64) -> R + Sync) -> Self {
        let events = o
            .order
            .par_iter()
            .with_min_len(1024)
            .map(|&r| make(r as usize, o.hash[r as usize]))
            .collect();
        Partition {
            offsets: o.offsets,
            rank: o.rank,
            events,
        }
    }

    fn range(&self, shard: usize) -> std::ops::Range<usize> {
        self.offsets[shard] as usize..self.offsets[shard + 1] as usize
    }

    fn events(&self, shard: usize) -> &[R] {
        &self.events[self.range(shard)]
    }
}

/// Distance, in events, between the stages of the prefetch pipeline of a shard loop.
const AHEAD: usize = 4;
/// Length of the rings holding the pipeline's positions, by event index modulo `RING`.
const RING: usize = 8;
const _: () = assert!(RING >= 2 * AHEAD);

/// Call `f(i, event, entity)` for each event `i` of a shard in order, its entity created
/// with `make(key)` when absent.
///
/// Prefetch pipeline, three stages `AHEAD` events apart: the index slot of event `i + 3 ×
/// AHEAD`, then the slab entry the slot's fingerprint names for event `i + 2 × AHEAD`, then,
/// once that entry is checked to hold the event's key (else the index is searched), the
/// entity's own buffer for event `i + AHEAD`, whose position is remembered. A prologue fills
/// the pipeline for the first events. Positions stay valid within a batch: entities are only
/// appended to the slab while processing, and an event whose entity was not found is looked
/// up again (and created if need be) when processed.
#[inline(always)]
fn for_each_entity<E: Keyed, R: EventRow>(
    table: &mut EntityTable<E>,
    events: &[R],
    mut make: impl FnMut(u64) -> E,
    mut f: impl FnMut(usize, &R, &mut E),
) {
    #[inline(always)]
    fn slot<E: Keyed, R: EventRow>(table: &EntityTable<E>, ev: &R) {
        table.prefetch_slot(ev.hash());
    }
    #[inline(always)]
    fn entry<E: Keyed, R: EventRow>(table: &EntityTable<E>, ev: &R) -> u32 {
        match table.guess(ev.hash()) {
            Some(p) => {
                table.prefetch_entry(p);
                p as u32
            }
            None => u32::MAX,
        }
    }
    #[inline(always)]
    fn data<E: Keyed, R: EventRow>(table: &EntityTable<E>, ev: &R, guessed: u32) -> u32 {
        let found = if guessed == u32::MAX {
            None
        } else if table.at(guessed as usize).key() == ev.key() {
            Some(guessed as usize)
        } else {
            table.find(ev.key(), ev.hash())
        };
        match found {
            Some(p) => {
                table.at(p).prefetch_data();
                p as u32
            }
            None => u32::MAX,
        }
    }

    let mut guessed = [u32::MAX; RING];
    let mut known = [u32::MAX; RING];
    for ev in events.iter().take(3 * AHEAD) {
        slot(table, ev);
    }
    for (j, ev) in events.iter().enumerate().take(2 * AHEAD) {
        guessed[j % RING] = entry(table, ev);
    }
    for (j, ev) in events.iter().enumerate().take(AHEAD) {
        known[j % RING] = data(table, ev, guessed[j % RING]);
    }
    for (i, ev) in events.iter().enumerate() {
        if let Some(e) = events.get(i + 3 * AHEAD) {
            slot(table, e);
        }
        if let Some(e) = events.get(i + 2 * AHEAD) {
            guessed[(i + 2 * AHEAD) % RING] = entry(table, e);
        }
        if let Some(e) = events.get(i + AHEAD) {
            let j = (i + AHEAD) % RING;
            known[j] = data(table, e, guessed[j]);
        }
        let p = match known[i % RING] {
            u32::MAX => table.position_or_insert(ev.key(), ev.hash(), || make(ev.key())),
            p => p as usize,
        };
        f(i, ev, table.at_mut(p));
    }
}

enum Task<'a> {
    Cards(
        &'a mut EntityTable<Card>,
        &'a [CardRow],
        &'a [AtomicU32],
        &'a mut [f32],
    ),
    Merchants(
        &'a mut MerchantShard,
        usize,
        &'a [MerchantRow],
        &'a mut [f32],
    ),
    Users(&'a mut EntityTable<User>, &'a [UserRow], &'a mut [f32]),
}

/// Shared, read-only context of a parallel phase.
struct BatchContext<'a> {
    card: &'a CardParams,
    merchant: &'a MerchantParams,
    user: &'a UserParams,
    pairs: &'a Pairs,
    shards: usize,
    /// Card partition position of each row.
    card_rank: &'a [u32],
    /// Merchant symbol of each event, by card partition position (set by merchant tasks).
    merchant_sym: &'a [AtomicU32],
}

impl BatchContext<'_> {
    fn run(&self, task: Task<'_>) {
        match task {
            Task::Cards(table, events, syms, out) => self.run_cards(table, events, syms, out),
            Task::Merchants(shard, s, events, out) => self.run_merchants(shard, s, events, out),
            Task::Users(table, events, out) => self.run_users(table, events, out),
        }
    }

    /// Row-local and card columns of `events`, written to consecutive rows of `out`.
    fn run_cards(
        &self,
        table: &mut EntityTable<Card>,
        events: &[CardRow],
        syms: &[AtomicU32],
        out: &mut [f32],
    ) {
        let width = out.len() / events.len();
        CARD_SCRATCH.with_borrow_mut(|scratch| {
            for_each_entity(table, events, Card::new, |i, e, state| {
                let row = &mut out[i * width..(i + 1) * width];
                let t = e.t;
                let ms_of_day = t.rem_euclid(86_400_000);
                let dow = (t.div_euclid(86_400_000) + 3).rem_euclid(7);
                row[0] = e.amount;
                row[1] = f64::from(e.amount).ln_1p() as f32;
                row[2] = (ms_of_day / 3_600_000) as f32;
                row[3] = dow as f32;
                row[4] = if dow >= 5 { 1.0 } else { 0.0 };
                row[5] = f32::from(e.channel);
                let ev = CardEvent {
                    t,
                    amount: e.amount,
                    merchant: syms[i].load(Ordering::Relaxed),
                    pair: e.pair,
                    category: e.category,
                    country: e.country,
                    lat: e.lat,
                    lon: e.lon,
                };
                card::process(
                    state,
                    &ev,
                    self.card,
                    scratch,
                    self.pairs,
                    &mut row[BASE_COLUMNS..],
                );
            });
        });
    }

    /// Merchant columns of `events`, written to consecutive rows of `out`; their merchant
    /// symbols go to `merchant_sym` at the card partition position of their row.
    fn run_merchants(
        &self,
        shard: &mut MerchantShard,
        s: usize,
        events: &[MerchantRow],
        out: &mut [f32],
    ) {
        let width = self.merchant.windows.len();
        let shards = self.shards;
        let MerchantShard { table, syms } = shard;
        for_each_entity(
            table,
            events,
            |key| Merchant::new(key, global_merchant_sym(syms.intern(key), s, shards)),
            |i, e, m| {
                m.process(e.t, self.merchant, &mut out[i * width..(i + 1) * width]);
                self.merchant_sym[self.card_rank[e.row as usize] as usize]
                    .store(m.sym(), Ordering::Relaxed);
            },
        );
    }

    /// User columns of `events`, written to consecutive rows of `out`.
    fn run_users(&self, table: &mut EntityTable<User>, events: &[UserRow], out: &mut [f32]) {
        let width = self.user.windows.len();
        USER_SCRATCH.with_borrow_mut(|scratch| {
            for_each_entity(table, events, User::new, |i, e, u| {
                u.process(
                    e.t,
                    e.card,
                    self.user,
                    scratch,
                    &mut out[i * width..(i + 1) * width],
                );
            });
        });
    }
}

/// Batches with fewer rows run on one thread (see [`sequential_pool`]).
pub const SEQUENTIAL_BELOW: usize = 2048;

/// A one-thread pool shared by every engine for small batches (the phases' rayon calls then
/// run inline on its worker).
fn sequential_pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "txfast-features-small".into())
            .build()
            .expect("a one-thread pool can always be built")
    })
}

/// Run each worker's task list, worker `w` of the current pool taking `per_worker[w]`.
fn run_tasks(ctx: &BatchContext<'_>, per_worker: Vec<Vec<Task<'_>>>) {
    // One uncontended lock per worker and phase, to hand each worker its task list.
    let per_worker: Vec<Mutex<Vec<Task<'_>>>> = per_worker.into_iter().map(Mutex::new).collect();
    rayon::broadcast(|b| {
        let tasks = std::mem::take(&mut *per_worker[b.index()].lock().expect("not poisoned"));
        for task in tasks {
            ctx.run(task);
        }
    });
}

/// A cell of the output matrix: an `f32`, or one not initialised yet.
trait Cell: Send {
    fn set(&mut self, v: f32);
    /// Set `dst` to the first `dst.len()` values of `src`.
    #[inline(always)]
    fn copy(dst: &mut [Self], src: &[f32])
    where
        Self: Sized,
    {
        for (d, &v) in dst.iter_mut().zip(src) {
            d.set(v);
        }
    }
}

impl Cell for f32 {
    #[inline(always)]
    fn set(&mut self, v: f32) {
        *self = v;
    }
}

impl Cell for std::mem::MaybeUninit<f32> {
    #[inline(always)]
    fn set(&mut self, v: f32) {
        self.write(v);
    }
}

/// Split `buf` into one block per shard of `part` (`cols` values per row).
fn shard_blocks<'a, T, R>(
    part: &Partition<R>,
    cols: usize,
    mut buf: &'a mut [T],
) -> Vec<&'a mut [T]> {
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
    merchants: Vec<MerchantShard>,
    users: Vec<EntityTable<User>>,
    /// (category, country) pair symbols of every card's combinations.
    pairs: Pairs,
    /// Label windows and the label state of merchants and cards.
    label_params: LabelParams,
    labels: LabelState,
    newest: Option<i64>,
    pool: Option<rayon::ThreadPool>,
    /// Working buffers of `process`, kept between batches (not state).
    buffers: BatchBuffers,
}

/// Per-batch working buffers: each shard task's output block and the merchant symbols the
/// card tasks read. Every cell used by a batch is written before it is read, so they are
/// reused without clearing.
#[derive(Default)]
struct BatchBuffers {
    card_out: Vec<f32>,
    merchant_out: Vec<f32>,
    user_out: Vec<f32>,
    merchant_sym: Vec<AtomicU32>,
}

/// The first `len` elements of `v`, grown when shorter; a buffer much longer than needed
/// (after a very large batch) is released first.
fn reuse<T>(v: &mut Vec<T>, len: usize, make: impl FnMut() -> T) -> &mut [T] {
    if v.len() > 4 * len && v.len() > 1 << 20 {
        *v = Vec::new();
    }
    if v.len() < len {
        v.resize_with(len, make);
    }
    &mut v[..len]
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
        let card = CardParams::new(&config.card_windows_ms, lateness);
        let merchant = MerchantParams {
            windows: config.merchant_windows_ms.clone(),
            retention: max_window(&config.merchant_windows_ms) + lateness,
        };
        let user = UserParams {
            windows: config.user_windows_ms.clone(),
            retention: max_window(&config.user_windows_ms) + lateness,
        };
        let shards = config.shards;
        let label_params = LabelParams {
            merchant_windows: config.merchant_label_windows_ms.clone(),
            card_windows: config.card_label_windows_ms.clone(),
            lateness,
        };
        Ok(FeatureEngine {
            layout: Layout::new(&config),
            label_params,
            labels: LabelState::default(),
            card,
            merchant,
            user,
            cards: (0..shards).map(|_| EntityTable::default()).collect(),
            pairs: Pairs::default(),
            merchants: (0..shards).map(|_| MerchantShard::default()).collect(),
            users: (0..shards).map(|_| EntityTable::default()).collect(),
            newest: None,
            pool,
            buffers: BatchBuffers::default(),
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
        let len = n * self.layout.width;
        let mut out = Vec::with_capacity(len);
        self.process_validated(cols, n, &mut out.spare_capacity_mut()[..len]);
        // SAFETY: `process_validated` writes every cell of every one of the `n` rows (the
        // gather fills the card, merchant and user columns of each row), so the first `len`
        // elements are initialised.
        unsafe { out.set_len(len) };
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

    fn process_validated<C: Cell>(&mut self, cols: &Columns<'_>, n: usize, out: &mut [C]) {
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
            pairs,
            pool,
            buffers,
            label_params,
            labels,
            ..
        } = self;
        let (label_params, labels) = (&*label_params, &*labels);
        let nl = label_params.columns();
        let mut work = move || {
            let c = cols;
            // The card order and the pair symbols of the rows, the merchant and user
            // partitions in parallel; then the card events, themselves in parallel.
            let ((card_order, pair_of_row), (pm, pu)) = rayon::join(
                || {
                    rayon::join(
                        || Order::new(c.card, shards, false),
                        || -> Vec<u32> {
                            c.category
                                .iter()
                                .zip(c.country)
                                .map(|(&category, &country)| pairs.intern([category, country]))
                                .collect()
                        },
                    )
                },
                || {
                    rayon::join(
                        || {
                            let o = Order::new(c.merchant, shards, false);
                            Partition::new(o, |r, hash| MerchantRow {
                                key: c.merchant[r],
                                hash,
                                t: c.ts_ms[r],
                                row: r as u32,
                            })
                        },
                        || {
                            let o = Order::new(c.user, shards, true);
                            Partition::new(o, |r, hash| UserRow {
                                key: c.user[r],
                                hash,
                                t: c.ts_ms[r],
                                card: c.card[r],
                            })
                        },
                    )
                },
            );
            let pc = Partition::par_new(card_order, |r, hash| CardRow {
                key: c.card[r],
                hash,
                t: c.ts_ms[r],
                lat: c.lat[r],
                lon: c.lon[r],
                category: c.category[r],
                country: c.country[r],
                amount: c.amount[r] as f32,
                pair: pair_of_row[r],
                channel: c.channel[r],
            });
            let card_out = reuse(&mut buffers.card_out, n * layout.card_cols, || 0.0);
            let merchant_out = reuse(&mut buffers.merchant_out, n * nm, || 0.0);
            let user_out = reuse(&mut buffers.user_out, pu.events.len() * nu, || 0.0);
            let merchant_sym = &*reuse(&mut buffers.merchant_sym, n, || AtomicU32::new(0));
            let threads = rayon::current_num_threads().max(1);
            let ctx = BatchContext {
                card,
                merchant,
                user,
                pairs,
                shards,
                card_rank: &pc.rank,
                merchant_sym,
            };

            // Shard s of every kind goes to worker s mod threads. Merchants (which name
            // themselves with symbols) and users first, then cards (which use the symbols).
            let mut per_worker: Vec<Vec<Task<'_>>> = (0..threads).map(|_| Vec::new()).collect();
            let blocks = shard_blocks(&pm, nm, merchant_out);
            for (s, (t, block)) in merchants.iter_mut().zip(blocks).enumerate() {
                let events = pm.events(s);
                if !events.is_empty() {
                    per_worker[s % threads].push(Task::Merchants(t, s, events, block));
                }
            }
            let blocks = shard_blocks(&pu, nu, user_out);
            for (s, (t, block)) in users.iter_mut().zip(blocks).enumerate() {
                let events = pu.events(s);
                if !events.is_empty() {
                    per_worker[s % threads].push(Task::Users(t, events, block));
                }
            }
            run_tasks(&ctx, per_worker);

            let mut per_worker: Vec<Vec<Task<'_>>> = (0..threads).map(|_| Vec::new()).collect();
            let blocks = shard_blocks(&pc, layout.card_cols, card_out);
            for (s, (t, block)) in cards.iter_mut().zip(blocks).enumerate() {
                let events = pc.events(s);
                if !events.is_empty() {
                    let syms = &merchant_sym[pc.range(s)];
                    per_worker[s % threads].push(Task::Cards(t, events, syms, block));
                }
            }
            run_tasks(&ctx, per_worker);

            // Gather the rows (prefetching the card block rows a few rows ahead).
            const ROWS_PER_CHUNK: usize = 512;
            const GATHER_AHEAD: usize = 8;
            out.par_chunks_mut(ROWS_PER_CHUNK * layout.width)
                .enumerate()
                .for_each(|(chunk, rows)| {
                    for (i, row) in rows.chunks_exact_mut(layout.width).enumerate() {
                        let r = chunk * ROWS_PER_CHUNK + i;
                        if let Some(&ahead) = pc.rank.get(r + GATHER_AHEAD) {
                            let cc = layout.card_cols;
                            let start = ahead as usize * cc;
                            store::prefetch_lines(&card_out[start..start + cc], 4);
                        }
                        let (card_cols, rest) = row.split_at_mut(layout.card_cols);
                        let (merchant_cols, rest) = rest.split_at_mut(nm);
                        let (user_cols, label_cols) = rest.split_at_mut(nu);
                        let pos = pc.rank[r] as usize;
                        C::copy(card_cols, &card_out[pos * layout.card_cols..]);
                        let pos = pm.rank[r] as usize;
                        C::copy(merchant_cols, &merchant_out[pos * nm..]);
                        match pu.rank[r] {
                            u32::MAX => user_cols.iter_mut().for_each(|c| c.set(-1.0)),
                            pos => C::copy(user_cols, &user_out[pos as usize * nu..]),
                        }
                        if nl > 0 {
                            let mut values = [0f32; 3 * config::MAX_LABEL_WINDOWS];
                            let values = &mut values[..nl];
                            labels.features(
                                c.ts_ms[r],
                                c.card[r],
                                c.merchant[r],
                                label_params,
                                values,
                            );
                            C::copy(label_cols, values);
                        }
                    }
                });
        };
        match pool {
            Some(pool) => pool.install(work),
            // A small batch (a stream at low rate, one partition's share of a batch) costs
            // less on one thread than the hand-offs between the phases of several; and when
            // the cores are busy, waiting for every worker to wake is what makes the tail.
            None if n < SEQUENTIAL_BELOW => sequential_pool().install(work),
            // On a worker of the global pool, so that the phases below start from inside it.
            None if rayon::current_thread_index().is_none() => rayon::join(work, || ()).0,
            None => work(),
        }
    }

    /// Whether any label column is configured.
    pub fn labels_enabled(&self) -> bool {
        self.label_params.enabled()
    }

    /// Add label events, in order, to the label state (see docs/features.md, "Label
    /// features"); returns how many rows were given. A transaction at `t` processed later
    /// counts a label if and only if its `known_ms <= t` (and it is in the window and not
    /// pruned); transactions already processed are not changed. Labels of a kind without
    /// label windows are ignored; so is everything when no label column is configured. On an
    /// input error nothing changes.
    pub fn process_labels(&mut self, cols: &LabelColumns<'_>) -> TxResult<usize> {
        let n = cols.validate()?;
        if self.label_params.enabled() {
            self.labels.add(cols, &self.label_params, self.newest);
        }
        Ok(n)
    }

    /// Drop every entity whose newest event is older than `watermark_ms − TTL` (TTL of its
    /// kind), and every label whose known time is older than `watermark_ms − TTL` (the TTL
    /// of label state being `idle_ttl_ms` or the longest label window of its kind + `L`);
    /// `None` uses the largest event time processed so far. Returns how many entities
    /// (label entities left without labels included) were dropped.
    pub fn evict_idle(&mut self, watermark_ms: Option<i64>) -> usize {
        let Some(watermark) = watermark_ms.or(self.newest) else {
            return 0;
        };
        let config = &self.config;
        let label_dropped = self
            .labels
            .evict(watermark, &self.label_params, |w| config.ttl_for(w));
        let card_before =
            watermark.saturating_sub(self.config.ttl_for(self.card.windows[self.card.longest]));
        let merchant_before =
            watermark.saturating_sub(self.config.ttl_for(max_window(&self.merchant.windows)));
        let user_before =
            watermark.saturating_sub(self.config.ttl_for(max_window(&self.user.windows)));
        let shards = self.config.shards;
        let FeatureEngine {
            cards,
            merchants,
            users,
            pairs,
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
                .map(|shard| {
                    shard
                        .table
                        .evict(|e| e.newest().is_none_or(|n| n < merchant_before))
                })
                .sum();
            let u: usize = users
                .par_iter_mut()
                .map(|t| t.evict(|e| e.summary().1 < user_before))
                .sum();
            // Pair symbols still used by a card's combination.
            let pair_marks: Vec<AtomicU64> = (0..pairs.id_bound().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect();
            cards.par_iter().for_each(|t| {
                for e in t.iter() {
                    e.for_each_combo(|combo| {
                        let id = (combo >> 32) as usize;
                        pair_marks[id / 64].fetch_or(1 << (id % 64), Ordering::Relaxed);
                    });
                }
            });
            pairs.retain(|id| {
                let id = id as usize;
                pair_marks[id / 64].load(Ordering::Relaxed) & (1 << (id % 64)) != 0
            });
            // Merchant symbols still named by a merchant or by a card's combination.
            let marks: Vec<Vec<AtomicU64>> = merchants
                .iter()
                .map(|m| {
                    (0..m.syms.id_bound().div_ceil(64))
                        .map(|_| AtomicU64::new(0))
                        .collect()
                })
                .collect();
            let mark = |global: u32| {
                let (s, local) = (global as usize % shards, global as usize / shards);
                marks[s][local / 64].fetch_or(1 << (local % 64), Ordering::Relaxed);
            };
            cards.par_iter().for_each(|t| {
                for e in t.iter() {
                    e.for_each_combo(|combo| mark(combo as u32));
                }
            });
            merchants.par_iter().for_each(|shard| {
                for e in shard.table.iter() {
                    mark(e.sym());
                }
            });
            merchants
                .par_iter_mut()
                .zip(&marks)
                .for_each(|(shard, marks)| {
                    shard.syms.retain(|local| {
                        let local = local as usize;
                        marks[local / 64].load(Ordering::Relaxed) & (1 << (local % 64)) != 0
                    });
                });
            c + m + u
        };
        label_dropped
            + match pool {
                Some(pool) => pool.install(work),
                None => work(),
            }
    }

    /// Entity counts, retained events and heap bytes of the state.
    pub fn stats(&self) -> Stats {
        fn kind<E: Keyed + Sync>(
            table: &EntityTable<E>,
            measure: impl Fn(&E) -> (usize, usize),
        ) -> (usize, usize, usize) {
            let (mut events, mut bytes) = (0, table.own_heap_bytes());
            for e in table.iter() {
                let (n, b) = measure(e);
                events += n;
                bytes += b;
            }
            (table.len(), events, bytes)
        }
        fn add(a: (usize, usize, usize), b: (usize, usize, usize)) -> (usize, usize, usize) {
            (a.0 + b.0, a.1 + b.1, a.2 + b.2)
        }
        self.install(|| {
            let shards = self.config.shards;
            let (cards, card_events, card_bytes) = self
                .cards
                .par_iter()
                .map(|t| kind(t, |e| (e.summary().0, e.heap_bytes())))
                .reduce(|| (0, 0, 0), add);
            let (merchants, merchant_events, merchant_bytes) = self
                .merchants
                .par_iter()
                .map(|s| {
                    let (n, events, bytes) = kind(&s.table, |e| (e.len(), e.heap_bytes()));
                    (n, events, bytes + s.syms.heap_bytes())
                })
                .reduce(|| (0, 0, 0), add);
            let (users, user_events, user_bytes) = self
                .users
                .par_iter()
                .map(|t| kind(t, |e| (e.summary().0, e.heap_bytes())))
                .reduce(|| (0, 0, 0), add);
            // The three per-kind shard vectors themselves.
            let card_bytes = card_bytes
                + self.pairs.heap_bytes()
                + store::heap_bytes(shards * std::mem::size_of::<EntityTable<Card>>());
            let merchant_bytes =
                merchant_bytes + store::heap_bytes(shards * std::mem::size_of::<MerchantShard>());
            let user_bytes =
                user_bytes + store::heap_bytes(shards * std::mem::size_of::<EntityTable<User>>());
            let l = self.labels.stats();
            Stats {
                cards,
                merchants,
                users,
                card_events,
                merchant_events,
                user_events,
                state_bytes: card_bytes + merchant_bytes + user_bytes + l.bytes,
                card_bytes,
                merchant_bytes,
                user_bytes,
                label_entities: l.entities,
                labels: l.labels,
                label_bytes: l.bytes,
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
        w.i64_list(&c.merchant_label_windows_ms);
        w.i64_list(&c.card_label_windows_ms);
        w.u8(u8::from(self.newest.is_some()));
        w.i64(self.newest.unwrap_or(0));
        for shard in &self.merchants {
            shard.syms.write_to(&mut w);
        }
        self.pairs.write_to(&mut w);
        w.u64(self.cards.iter().map(|t| t.len() as u64).sum());
        for e in self.cards.iter().flat_map(|t| t.iter()) {
            e.write_to(&mut w);
        }
        w.u64(self.merchants.iter().map(|s| s.table.len() as u64).sum());
        for e in self.merchants.iter().flat_map(|s| s.table.iter()) {
            e.write_to(&mut w);
        }
        w.u64(self.users.iter().map(|t| t.len() as u64).sum());
        for e in self.users.iter().flat_map(|t| t.iter()) {
            e.write_to(&mut w);
        }
        self.labels.write_to(&mut w);
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
        if !snapshot::READABLE_VERSIONS.contains(&version) {
            return Err(TxError::Snapshot(format!(
                "unsupported format version {version} (this build reads {:?})",
                snapshot::READABLE_VERSIONS
            )));
        }
        // Version 2 has no label configuration or state: restored with labels off.
        let has_labels = version >= 3;
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
        let (merchant_label_windows_ms, card_label_windows_ms) = if has_labels {
            (r.i64_list()?, r.i64_list()?)
        } else {
            (Vec::new(), Vec::new())
        };
        let config = EngineConfig {
            merchant_label_windows_ms,
            card_label_windows_ms,
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

        let merchant_syms = (0..shards)
            .map(|_| Symbols::<u64>::read_from(&mut r, "merchant"))
            .collect::<TxResult<Vec<_>>>()?;
        let pairs = Pairs::read_from(&mut r, "pair")?;
        let merchant_ok = |global: u32| {
            let (s, local) = (global as usize % shards, global as usize / shards);
            local <= u32::MAX as usize && merchant_syms[s].is_used(local as u32)
        };

        let n = r.count(36)?;
        let mut parts: Vec<Vec<Card>> = (0..shards).map(|_| Vec::new()).collect();
        let mut scratch = CardScratch::default();
        for _ in 0..n {
            let e = Card::read_from(&mut r, &mut scratch, &merchant_ok, &pairs)?;
            parts[shard_of(e.key(), shards)].push(e);
        }
        engine.cards = collect_tables(parts, "card")?;
        engine.pairs = pairs;

        let n = r.count(24)?;
        let mut parts: Vec<Vec<Merchant>> = (0..shards).map(|_| Vec::new()).collect();
        for _ in 0..n {
            let e = Merchant::read_from(&mut r)?;
            let s = shard_of(e.key(), shards);
            let (sym_shard, local) = (e.sym() as usize % shards, e.sym() as usize / shards);
            if sym_shard != s
                || !merchant_syms[s].is_used(local as u32)
                || merchant_syms[s].key(local as u32) != e.key()
            {
                return Err(TxError::Snapshot(format!(
                    "merchant {}: bad symbol",
                    e.key()
                )));
            }
            parts[s].push(e);
        }
        let tables = collect_tables(parts, "merchant")?;
        engine.merchants = tables
            .into_iter()
            .zip(merchant_syms)
            .map(|(table, syms)| MerchantShard { table, syms })
            .collect();

        let n = r.count(12)?;
        let mut parts: Vec<Vec<User>> = (0..shards).map(|_| Vec::new()).collect();
        let mut scratch = UserScratch::default();
        for _ in 0..n {
            let e = User::read_from(&mut r, &mut scratch)?;
            parts[shard_of(e.key(), shards)].push(e);
        }
        engine.users = collect_tables(parts, "user")?;
        if has_labels {
            engine.labels = LabelState::read_from(&mut r)?;
        }
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
