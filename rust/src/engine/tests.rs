//! Engine-level tests: batches, partitions, eviction, snapshots.

use super::*;

const T: i64 = 1_717_249_500_000; // 2024-06-01T13:45:00Z, a Saturday

fn small() -> EngineConfig {
    EngineConfig {
        card_windows_ms: vec![5_000, 60_000],
        merchant_windows_ms: vec![5_000],
        user_windows_ms: vec![5_000],
        allowed_lateness_ms: 10_000,
        ..EngineConfig::default()
    }
}

#[derive(Default)]
struct Batch {
    ts: Vec<i64>,
    card: Vec<u64>,
    amount: Vec<f64>,
    merchant: Vec<u64>,
    user: Vec<u64>,
    category: Vec<u64>,
    country: Vec<u64>,
    lat: Vec<f64>,
    lon: Vec<f64>,
    channel: Vec<u8>,
}

impl Batch {
    fn push(&mut self, ts: i64, card: u64, amount: f64, merchant: u64, user: u64) -> &mut Self {
        self.ts.push(ts);
        self.card.push(card);
        self.amount.push(amount);
        self.merchant.push(merchant);
        self.user.push(user);
        self.category.push(card % 3);
        self.country.push(merchant % 2);
        let located = ts % 3 == 0;
        self.lat.push(if located {
            48.0 + (ts % 7) as f64
        } else {
            f64::NAN
        });
        self.lon.push(if located { 2.0 } else { f64::NAN });
        self.channel.push((ts % 7) as u8);
        self
    }

    fn cols(&self) -> Columns<'_> {
        self.slice(0, self.ts.len())
    }

    fn slice(&self, a: usize, b: usize) -> Columns<'_> {
        Columns {
            ts_ms: &self.ts[a..b],
            card: &self.card[a..b],
            amount: &self.amount[a..b],
            merchant: &self.merchant[a..b],
            user: &self.user[a..b],
            category: &self.category[a..b],
            country: &self.country[a..b],
            lat: &self.lat[a..b],
            lon: &self.lon[a..b],
            channel: &self.channel[a..b],
        }
    }
}

fn random_stream(n: usize, seed: u64) -> Batch {
    let mut b = Batch::default();
    let mut x = seed;
    let mut next = move || {
        x = crate::hash::mix64(x.wrapping_add(0x9e37_79b9_7f4a_7c15));
        x
    };
    let mut clock = T;
    for _ in 0..n {
        clock += (next() % 3_000) as i64;
        let late = if next() % 5 == 0 {
            (next() % 30_000) as i64
        } else {
            0
        };
        let user = next() % 5;
        b.push(
            clock - late,
            1 + next() % 7,
            1.0 + (next() % 10_000) as f64 / 100.0,
            1 + next() % 4,
            user,
        );
    }
    b
}

fn col(engine: &FeatureEngine, name: &str) -> usize {
    engine
        .feature_names()
        .iter()
        .position(|n| n == name)
        .unwrap()
}

#[test]
fn default_names_and_width() {
    let e = FeatureEngine::new(EngineConfig::default()).unwrap();
    assert_eq!(e.width(), 37);
    let names = e.feature_names();
    assert_eq!(names.len(), 37);
    assert_eq!(names[6], "card_count_1m");
    assert_eq!(names[27], "card_amount_z_30d");
    assert_eq!(names[34], "merchant_count_24h");
    assert_eq!(names[36], "user_distinct_cards_24h");
}

#[test]
fn invalid_configs_are_refused() {
    let bad = [
        EngineConfig {
            card_windows_ms: vec![],
            ..small()
        },
        EngineConfig {
            card_windows_ms: vec![1_500],
            ..small()
        },
        EngineConfig {
            merchant_windows_ms: vec![0],
            ..small()
        },
        EngineConfig {
            user_windows_ms: vec![1_000, 1_000],
            ..small()
        },
        EngineConfig {
            allowed_lateness_ms: -1,
            ..small()
        },
        EngineConfig {
            idle_ttl_ms: Some(-1),
            ..small()
        },
        EngineConfig {
            shards: 0,
            ..small()
        },
        EngineConfig {
            threads: Some(0),
            ..small()
        },
        EngineConfig {
            merchant_windows_ms: vec![50 * 86_400_000],
            ..small()
        },
    ];
    for c in bad {
        assert!(
            matches!(FeatureEngine::new(c.clone()), Err(TxError::Config(_))),
            "{c:?}"
        );
    }
}

#[test]
fn row_local_columns() {
    let mut e = FeatureEngine::new(small()).unwrap();
    let mut b = Batch::default();
    b.push(T, 1, 42.5, 1, 0);
    let out = e.process(&b.cols()).unwrap();
    assert_eq!(
        &out[..6],
        &[42.5, 43.5f64.ln() as f32, 13.0, 5.0, 1.0, (T % 7) as f32]
    );
    assert_eq!(out[col(&e, "user_distinct_cards_5s")], -1.0);
}

#[test]
fn mismatched_lengths_and_bad_values_are_input_errors() {
    let mut e = FeatureEngine::new(small()).unwrap();
    let mut b = Batch::default();
    b.push(T, 1, 1.0, 1, 1).push(T + 1, 1, 1.0, 1, 1);
    let short = Columns {
        channel: &b.channel[..1],
        ..b.cols()
    };
    assert!(matches!(e.process(&short), Err(TxError::Input(_))));
    b.amount[1] = f64::NAN;
    assert!(matches!(e.process(&b.cols()), Err(TxError::Input(_))));
    b.amount[1] = 1.0;
    b.lat[1] = 1.0;
    b.lon[1] = f64::NAN;
    assert!(matches!(e.process(&b.cols()), Err(TxError::Input(_))));
    assert_eq!(e.stats().cards, 0);
}

#[test]
fn batch_splits_shards_and_threads_do_not_change_results() {
    let b = random_stream(600, 1);
    let whole = FeatureEngine::new(small())
        .unwrap()
        .process(&b.cols())
        .unwrap();
    for (shards, threads) in [(1, Some(1)), (3, Some(2)), (64, None), (7, Some(3))] {
        let mut e = FeatureEngine::new(EngineConfig {
            shards,
            threads,
            ..small()
        })
        .unwrap();
        let mut parts = Vec::new();
        let mut a = 0;
        for (i, size) in [1usize, 5, 100, 17, 300, 177].into_iter().enumerate() {
            let b_end = (a + size).min(600);
            parts.extend(e.process(&b.slice(a, b_end)).unwrap());
            a = b_end;
            assert!(i < 6);
        }
        assert_eq!(parts, whole, "shards={shards}");
    }
}

#[test]
fn snapshot_round_trip_continues_identically() {
    let b = random_stream(800, 2);
    let mut uninterrupted = FeatureEngine::new(small()).unwrap();
    let expected = uninterrupted.process(&b.cols()).unwrap();
    let mut first = FeatureEngine::new(EngineConfig {
        shards: 5,
        ..small()
    })
    .unwrap();
    let mut got = first.process(&b.slice(0, 400)).unwrap();
    let blob = first.snapshot();
    let mut restored = FeatureEngine::restore(&blob).unwrap();
    assert_eq!(restored.stats(), first.stats());
    assert_eq!(restored.snapshot(), blob);
    got.extend(restored.process(&b.slice(400, 800)).unwrap());
    assert_eq!(got, expected);
}

#[test]
fn snapshot_after_eviction_keeps_symbols_and_continues_identically() {
    // Merchants and pairs come and go, so the symbol tables have freed ids when written.
    let mut b = Batch::default();
    for i in 0..900u64 {
        let t = T + (i as i64) * 700;
        let merchant = if i < 300 { 100 + i % 40 } else { 1 + i % 7 };
        b.push(t, 1 + i % 11, 1.0 + (i % 13) as f64, merchant, i % 5);
        b.category[i as usize] = i % 9;
        b.country[i as usize] = (i / 100) % 4;
    }
    let mut uninterrupted = FeatureEngine::new(small()).unwrap();
    let mut first = FeatureEngine::new(small()).unwrap();
    let mut expected = uninterrupted.process(&b.slice(0, 450)).unwrap();
    let mut got = first.process(&b.slice(0, 450)).unwrap();
    let evicted = uninterrupted.evict_idle(None);
    assert!(evicted > 0);
    assert_eq!(first.evict_idle(None), evicted);
    let free_ids: usize = first
        .merchants
        .iter()
        .map(|m| m.syms.id_bound() - m.syms.live())
        .sum();
    assert!(free_ids > 0);
    let blob = first.snapshot();
    let mut restored = FeatureEngine::restore(&blob).unwrap();
    assert_eq!(restored.stats(), first.stats());
    assert_eq!(restored.snapshot(), blob);
    expected.extend(uninterrupted.process(&b.slice(450, 900)).unwrap());
    got.extend(restored.process(&b.slice(450, 900)).unwrap());
    assert_eq!(got, expected);
    assert_eq!(restored.stats(), uninterrupted.stats());
}

#[test]
fn corrupted_snapshots_are_refused() {
    let mut e = FeatureEngine::new(small()).unwrap();
    e.process(&random_stream(200, 3).cols()).unwrap();
    let blob = e.snapshot();
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        b"not a txfast snapshot".to_vec(),
        vec![0; 64],
        blob[..1].to_vec(),
        blob[..8].to_vec(),
        blob[..blob.len() / 2].to_vec(),
        blob[..blob.len() - 1].to_vec(),
    ];
    let mut bad_magic = blob.clone();
    bad_magic[0] ^= 0xff;
    cases.push(bad_magic);
    let mut bad_version = blob.clone();
    bad_version[4] = 99;
    cases.push(bad_version);
    let mut flipped = blob.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    cases.push(flipped);
    for c in cases {
        assert!(
            matches!(FeatureEngine::restore(&c), Err(TxError::Snapshot(_))),
            "{} bytes",
            c.len()
        );
    }
}

#[test]
fn structurally_invalid_state_is_refused_even_with_a_valid_checksum() {
    let mut e = FeatureEngine::new(EngineConfig {
        merchant_windows_ms: vec![5_000],
        ..small()
    })
    .unwrap();
    let mut b = Batch::default();
    b.push(T, 1, 1.0, 1, 0);
    e.process(&b.cols()).unwrap();
    let blob = e.snapshot();
    let mut body = blob[..blob.len() - 8].to_vec();
    // Find the card header by its known fields: 1 record, 1 combo (any combo layout), and
    // give it an invalid combo layout.
    let header = 1u64 | (1 << 32);
    let at = body
        .windows(8)
        .position(|w| u64::from_le_bytes(w.try_into().unwrap()) & ((1 << 56) - 1) == header)
        .unwrap();
    body[at..at + 8].copy_from_slice(&(header | (40 << 56)).to_le_bytes());
    let sum = snapshot::checksum(&body);
    body.extend_from_slice(&sum.to_le_bytes());
    assert!(matches!(
        FeatureEngine::restore(&body),
        Err(TxError::Snapshot(_))
    ));
}

#[test]
fn eviction_is_strict_and_per_kind() {
    let mut e = FeatureEngine::new(small()).unwrap();
    let mut b = Batch::default();
    b.push(T, 1, 1.0, 1, 1).push(T + 20_000, 2, 1.0, 2, 2);
    e.process(&b.cols()).unwrap();
    // Default TTL per kind: card 60 s + 10 s, merchant and user 5 s + 10 s.
    assert_eq!(e.evict_idle(None), 2); // merchant 1 and user 1
                                       // Card 1: newest == watermark - ttl is kept; merchant 2 and user 2 go.
    assert_eq!(e.evict_idle(Some(T + 70_000)), 2);
    assert_eq!(e.evict_idle(Some(T + 70_001)), 1);
    let s = e.stats();
    assert_eq!((s.cards, s.merchants, s.users), (1, 0, 0));
    let mut fixed = FeatureEngine::new(EngineConfig {
        idle_ttl_ms: Some(0),
        ..small()
    })
    .unwrap();
    fixed.process(&b.cols()).unwrap();
    assert_eq!(fixed.evict_idle(None), 3);
    assert_eq!(fixed.evict_idle(Some(i64::MAX)), 3);
    assert_eq!(fixed.stats(), FeatureEngine::new(small()).unwrap().stats());
}

#[test]
fn eviction_forgets_location_and_keeps_on_time_features() {
    let b = random_stream(500, 4);
    let mut plain = FeatureEngine::new(small()).unwrap();
    let mut evicting = FeatureEngine::new(small()).unwrap();
    let mut evicted = 0;
    for i in 0..500 {
        let x = plain.process(&b.slice(i, i + 1)).unwrap();
        let y = evicting.process(&b.slice(i, i + 1)).unwrap();
        // Late events beyond L may differ; on-time ones must not.
        if b.ts[i] >= plain.newest_event_ms().unwrap() - small().allowed_lateness_ms {
            let km = col(&plain, "card_km_from_prev");
            let (xa, ya): (Vec<f32>, Vec<f32>) = x
                .iter()
                .zip(&y)
                .enumerate()
                .filter(|(j, _)| *j != km && *j != km + 1)
                .map(|(_, p)| (*p.0, *p.1))
                .unzip();
            assert_eq!(xa, ya, "row {i}");
        }
        evicted += evicting.evict_idle(None);
    }
    assert!(evicted > 0);
}

#[test]
fn state_bytes_count_every_allocation() {
    let mut e = FeatureEngine::new(EngineConfig {
        shards: 1,
        ..small()
    })
    .unwrap();
    let empty = e.stats().state_bytes;
    let mut b = Batch::default();
    b.push(T, 1, 1.0, 1, 1);
    e.process(&b.cols()).unwrap();
    let s = e.stats();
    assert_eq!(
        (
            s.cards,
            s.merchants,
            s.users,
            s.card_events,
            s.merchant_events,
            s.user_events
        ),
        (1, 1, 1, 1, 1, 1)
    );
    // card: slab 48 + index + buffer of 4 words; merchant: slab + index + 4 bytes; user likewise.
    assert!(
        s.state_bytes - empty >= 48 + 6 * 8 + 4 + 24 + 4 * 7,
        "{}",
        s.state_bytes - empty
    );
}
