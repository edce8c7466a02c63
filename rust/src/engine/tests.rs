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

fn with_labels() -> EngineConfig {
    EngineConfig {
        merchant_label_windows_ms: vec![20_000, 5_000],
        card_label_windows_ms: vec![30_000],
        ..small()
    }
}

/// Labels about the transactions of `b` (every third one fraud), known `delay` ms later.
fn labels_of(b: &Batch, delay: i64) -> (Vec<i64>, Vec<u64>, Vec<u64>, Vec<u8>) {
    let known = b.ts.iter().map(|t| t + delay).collect();
    let label = (0..b.ts.len()).map(|i| u8::from(i % 3 == 0)).collect();
    (known, b.card.clone(), b.merchant.clone(), label)
}

fn label_cols<'a>(l: &'a (Vec<i64>, Vec<u64>, Vec<u64>, Vec<u8>)) -> LabelColumns<'a> {
    LabelColumns {
        known_ms: &l.0,
        card: &l.1,
        merchant: &l.2,
        label: &l.3,
    }
}

#[test]
fn label_names_follow_the_other_columns() {
    let e = FeatureEngine::new(with_labels()).unwrap();
    let names = e.feature_names();
    assert_eq!(e.width(), names.len());
    assert_eq!(
        names[names.len() - 5..],
        [
            "merchant_fraud_labels_20s",
            "merchant_fraud_labels_5s",
            "merchant_fraud_rate_20s",
            "merchant_fraud_rate_5s",
            "card_fraud_labels_30s",
        ]
    );
    assert!(e.labels_enabled());
    assert!(!FeatureEngine::new(small()).unwrap().labels_enabled());
    let too_many = EngineConfig {
        card_label_windows_ms: (1..=17).map(|s| s * 1000).collect(),
        ..small()
    };
    assert!(matches!(
        FeatureEngine::new(too_many),
        Err(TxError::Config(_))
    ));
    let duplicate = EngineConfig {
        merchant_label_windows_ms: vec![5_000, 5_000],
        ..small()
    };
    assert!(matches!(
        FeatureEngine::new(duplicate),
        Err(TxError::Config(_))
    ));
}

#[test]
fn labels_do_not_change_the_other_columns_and_future_labels_change_nothing() {
    let b = random_stream(600, 11);
    let plain = FeatureEngine::new(small())
        .unwrap()
        .process(&b.cols())
        .unwrap();
    // Every label fed before any transaction, all known after the last transaction: no
    // label column moves from its "no label" value and the other columns are unchanged.
    let last = *b.ts.iter().max().unwrap();
    let l = labels_of(&b, last - T + 100_000);
    let mut e = FeatureEngine::new(with_labels()).unwrap();
    e.process_labels(&label_cols(&l)).unwrap();
    let rows = e.process(&b.cols()).unwrap();
    let (w, pw) = (e.width(), plain.len() / 600);
    for i in 0..600 {
        assert_eq!(rows[i * w..i * w + pw], plain[i * pw..(i + 1) * pw]);
        assert_eq!(rows[i * w + pw..(i + 1) * w], [0.0, 0.0, -1.0, -1.0, 0.0]);
    }
}

#[test]
fn label_known_exactly_at_t_counts_and_one_ms_later_does_not() {
    let mut b = Batch::default();
    b.push(T, 1, 10.0, 2, 0).push(T + 1, 1, 10.0, 2, 0);
    let mut e = FeatureEngine::new(with_labels()).unwrap();
    let l = (vec![T + 1], vec![1], vec![2], vec![1]);
    e.process_labels(&label_cols(&l)).unwrap();
    let rows = e.process(&b.cols()).unwrap();
    let w = e.width();
    assert_eq!(rows[w - 5..w], [0.0, 0.0, -1.0, -1.0, 0.0]);
    assert_eq!(rows[2 * w - 5..2 * w], [1.0, 1.0, 1.0, 1.0, 1.0]);
}

#[test]
fn label_order_against_transactions_does_not_matter_within_the_contract() {
    // Labels known `delay` after their transaction: fed all up front, or each just before
    // the first transaction at or after its known time, the rows are the same (every event
    // of the stream is at most 30 s late, within the allowed lateness here, so pruning at
    // label insertion changes nothing).
    let b = random_stream(900, 5);
    let l = labels_of(&b, 4_000);
    let config = EngineConfig {
        allowed_lateness_ms: 30_000,
        ..with_labels()
    };
    let mut upfront = FeatureEngine::new(config.clone()).unwrap();
    upfront.process_labels(&label_cols(&l)).unwrap();
    let expected = upfront.process(&b.cols()).unwrap();

    let mut interleaved = FeatureEngine::new(EngineConfig {
        shards: 3,
        ..config
    })
    .unwrap();
    let mut order: Vec<usize> = (0..l.0.len()).collect();
    order.sort_by_key(|&i| l.0[i]);
    let mut next = 0;
    let mut got = Vec::new();
    for i in 0..b.ts.len() {
        while next < order.len() && l.0[order[next]] <= b.ts[i] {
            let j = order[next];
            let one = (vec![l.0[j]], vec![l.1[j]], vec![l.2[j]], vec![l.3[j]]);
            interleaved.process_labels(&label_cols(&one)).unwrap();
            next += 1;
        }
        got.extend(interleaved.process(&b.slice(i, i + 1)).unwrap());
    }
    let first_difference = (0..got.len()).find(|&i| got[i] != expected[i]);
    assert_eq!(first_difference, None);
    // Some label column is not at its "no label" value.
    let w = upfront.width();
    assert!((0..900).any(|i| expected[(i + 1) * w - 1] > 0.0));
    assert!((0..900).any(|i| expected[(i + 1) * w - 3] > 0.0));
}

#[test]
fn snapshot_round_trip_with_label_state_mid_stream() {
    let b = random_stream(800, 7);
    let l = labels_of(&b, 3_000);
    let mut uninterrupted = FeatureEngine::new(with_labels()).unwrap();
    uninterrupted.process_labels(&label_cols(&l)).unwrap();
    let expected = uninterrupted.process(&b.cols()).unwrap();

    let mut first = FeatureEngine::new(with_labels()).unwrap();
    first.process_labels(&label_cols(&l)).unwrap();
    let mut got = first.process(&b.slice(0, 400)).unwrap();
    let blob = first.snapshot();
    let mut restored = FeatureEngine::restore(&blob).unwrap();
    assert_eq!(restored.config(), first.config());
    assert_eq!(restored.snapshot(), blob);
    let (a, r) = (first.stats(), restored.stats());
    assert_eq!((a.label_entities, a.labels), (r.label_entities, r.labels));
    assert!(a.labels > 0);
    got.extend(restored.process(&b.slice(400, 800)).unwrap());
    assert_eq!(got, expected);
}

#[test]
fn version_2_snapshots_load_with_labels_off() {
    let b = random_stream(300, 3);
    let mut e = FeatureEngine::new(small()).unwrap();
    e.process(&b.slice(0, 150)).unwrap();
    let v3 = e.snapshot();
    // Rebuild the version 2 layout: no label windows after the shards, no label state.
    let config_end = 8 + [2usize, 1, 1].iter().map(|n| 4 + 8 * n).sum::<usize>() + 8 + 9 + 4;
    let mut v2 = v3[..config_end].to_vec();
    assert_eq!(v3[config_end..config_end + 8], [0u8; 8]);
    v2.extend_from_slice(&v3[config_end + 8..v3.len() - 8 - 16]);
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    let sum = snapshot::checksum(&v2);
    v2.extend_from_slice(&sum.to_le_bytes());
    let mut restored = FeatureEngine::restore(&v2).unwrap();
    assert_eq!(restored.snapshot(), v3);
    assert_eq!(
        restored.process(&b.slice(150, 300)).unwrap(),
        e.process(&b.slice(150, 300)).unwrap()
    );
    let mut v9 = v3.clone();
    v9[4..8].copy_from_slice(&9u32.to_le_bytes());
    assert!(matches!(
        FeatureEngine::restore(&v9),
        Err(TxError::Snapshot(_))
    ));
}

#[test]
fn eviction_drops_old_labels_only() {
    let mut e = FeatureEngine::new(with_labels()).unwrap();
    let l = (vec![T, T + 100_000], vec![1, 1], vec![2, 2], vec![1, 1]);
    e.process_labels(&label_cols(&l)).unwrap();
    assert_eq!(e.stats().labels, 4);
    // Merchant TTL 20 s + 10 s, card 30 s + 10 s: at T + 35 s the merchant's first label goes.
    assert_eq!(e.evict_idle(Some(T + 35_000)), 0);
    assert_eq!(e.stats().labels, 1 + 2);
    assert_eq!(e.evict_idle(Some(T + 200_000)), 2);
    assert_eq!(e.stats().label_entities, 0);
}
