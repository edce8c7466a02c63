//! Binding of the feature engine and the id hash: numpy columns in, a `float32` matrix out.

use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyType};

use crate::engine::config::{
    DEFAULT_ALLOWED_LATENESS_MS, DEFAULT_CARD_WINDOWS_MS, DEFAULT_MERCHANT_WINDOWS_MS,
    DEFAULT_SHARDS, DEFAULT_USER_WINDOWS_MS,
};
use crate::engine::{Columns, EngineConfig, FeatureEngine, LabelColumns, FEATURE_VERSION};
use crate::error::TxError;
use crate::hash;

/// Per-card, per-merchant and per-user sliding-window feature engine (see docs/features.md).
#[pyclass(module = "txfast._core", name = "FeatureEngine")]
struct PyFeatureEngine {
    inner: FeatureEngine,
}

fn slice<'a, T: numpy::Element>(name: &str, a: &'a PyReadonlyArray1<'_, T>) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| TxError::Input(format!("column {name} is not contiguous")).into())
}

#[pymethods]
impl PyFeatureEngine {
    #[new]
    #[pyo3(signature = (
        *,
        card_windows_ms = DEFAULT_CARD_WINDOWS_MS.to_vec(),
        merchant_windows_ms = DEFAULT_MERCHANT_WINDOWS_MS.to_vec(),
        user_windows_ms = DEFAULT_USER_WINDOWS_MS.to_vec(),
        allowed_lateness_ms = DEFAULT_ALLOWED_LATENESS_MS,
        idle_ttl_ms = None,
        shards = DEFAULT_SHARDS as i64,
        threads = None,
        merchant_label_windows_ms = Vec::new(),
        card_label_windows_ms = Vec::new(),
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        card_windows_ms: Vec<i64>,
        merchant_windows_ms: Vec<i64>,
        user_windows_ms: Vec<i64>,
        allowed_lateness_ms: i64,
        idle_ttl_ms: Option<i64>,
        shards: i64,
        threads: Option<i64>,
        merchant_label_windows_ms: Vec<i64>,
        card_label_windows_ms: Vec<i64>,
    ) -> PyResult<Self> {
        let count = |name: &str, v: i64| {
            usize::try_from(v).map_err(|_| TxError::Config(format!("{name} must be positive: {v}")))
        };
        let config = EngineConfig {
            card_windows_ms,
            merchant_windows_ms,
            user_windows_ms,
            allowed_lateness_ms,
            idle_ttl_ms,
            shards: count("shards", shards)?,
            threads: threads.map(|t| count("threads", t)).transpose()?,
            merchant_label_windows_ms,
            card_label_windows_ms,
        };
        Ok(Self {
            inner: FeatureEngine::new(config)?,
        })
    }

    /// Column names of the output, in order.
    #[getter]
    fn feature_names(&self) -> Vec<String> {
        self.inner.feature_names()
    }

    /// Feature-set version (`FEATURE_VERSION`).
    #[getter]
    fn feature_version(&self) -> &'static str {
        FEATURE_VERSION
    }

    /// Compute the features of a batch and add its events to the state.
    ///
    /// Takes ten 1-D contiguous numpy arrays of one length (int64, uint64, float64, uint64,
    /// uint64, uint64, uint64, float64, float64, uint8), processes the events in the given
    /// order and returns a C-contiguous float32 array of shape `(n, len(feature_names))`.
    /// Releases the GIL while it works. Raises `InputError` on columns of different lengths or
    /// invalid values (nothing is changed then). With `out` (a C-contiguous float32 array of
    /// that shape, for example a row range of a larger matrix), the features are written into
    /// it and `out` is returned.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (ts_ms, card, amount, merchant, user, category, country, lat, lon, channel, out = None))]
    fn process<'py>(
        &mut self,
        py: Python<'py>,
        ts_ms: PyReadonlyArray1<'py, i64>,
        card: PyReadonlyArray1<'py, u64>,
        amount: PyReadonlyArray1<'py, f64>,
        merchant: PyReadonlyArray1<'py, u64>,
        user: PyReadonlyArray1<'py, u64>,
        category: PyReadonlyArray1<'py, u64>,
        country: PyReadonlyArray1<'py, u64>,
        lat: PyReadonlyArray1<'py, f64>,
        lon: PyReadonlyArray1<'py, f64>,
        channel: PyReadonlyArray1<'py, u8>,
        out: Option<Bound<'py, PyArray2<f32>>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let cols = Columns {
            ts_ms: slice("ts_ms", &ts_ms)?,
            card: slice("card", &card)?,
            amount: slice("amount", &amount)?,
            merchant: slice("merchant", &merchant)?,
            user: slice("user", &user)?,
            category: slice("category", &category)?,
            country: slice("country", &country)?,
            lat: slice("lat", &lat)?,
            lon: slice("lon", &lon)?,
            channel: slice("channel", &channel)?,
        };
        let width = self.inner.width();
        let engine = &mut self.inner;
        if let Some(array) = out {
            let shape = array.shape().to_vec();
            if !array.is_c_contiguous() {
                return Err(TxError::Input("out is not C-contiguous".into()).into());
            }
            if shape[1] != width {
                return Err(TxError::Input(format!(
                    "out has {} columns, the engine computes {width}",
                    shape[1]
                ))
                .into());
            }
            let mut guard = array
                .try_readwrite()
                .map_err(|_| TxError::Input("out is read-only or already borrowed".into()))?;
            let cells = guard
                .as_slice_mut()
                .map_err(|_| TxError::Input("out is not C-contiguous".into()))?;
            py.detach(|| engine.process_into(&cols, cells))?;
            drop(guard);
            return Ok(array);
        }
        let out = py.detach(|| engine.process(&cols))?;
        let rows = out.len().checked_div(width).unwrap_or(0);
        let matrix = Array2::from_shape_vec((rows, width), out).expect("rows × width cells");
        Ok(matrix.into_pyarray(py))
    }

    /// Whether label columns are configured (any merchant or card label window).
    #[getter]
    fn labels_enabled(&self) -> bool {
        self.inner.labels_enabled()
    }

    /// Add label events to the label state, in order; returns the number of rows.
    ///
    /// Takes four 1-D contiguous numpy arrays of one length (int64 known time, uint64 card,
    /// uint64 merchant, uint8 label 0/1). A transaction processed afterwards at `t` counts a
    /// label only if `known_ms <= t`. Ignored (after validation) when no label window is
    /// configured. Releases the GIL. Raises `InputError` on columns of different lengths or
    /// a label other than 0/1 (nothing is changed then).
    fn process_labels(
        &mut self,
        py: Python<'_>,
        known_ms: PyReadonlyArray1<'_, i64>,
        card: PyReadonlyArray1<'_, u64>,
        merchant: PyReadonlyArray1<'_, u64>,
        label: PyReadonlyArray1<'_, u8>,
    ) -> PyResult<usize> {
        let cols = LabelColumns {
            known_ms: slice("known_ms", &known_ms)?,
            card: slice("card", &card)?,
            merchant: slice("merchant", &merchant)?,
            label: slice("label", &label)?,
        };
        let engine = &mut self.inner;
        Ok(py.detach(|| engine.process_labels(&cols))?)
    }

    /// Serialise configuration and state: magic `b"TXFS"`, format version, config, state.
    ///
    /// Releases the GIL while serialising.
    fn snapshot<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let engine = &self.inner;
        let blob = py.detach(|| engine.snapshot());
        PyBytes::new(py, &blob)
    }

    /// Rebuild an engine from `snapshot()` bytes (default threads).
    ///
    /// Raises `SnapshotError` on bad magic, an unsupported version, truncated or corrupted
    /// data. Releases the GIL while parsing.
    #[classmethod]
    fn restore(_cls: &Bound<'_, PyType>, py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let inner = py.detach(|| FeatureEngine::restore(data))?;
        Ok(Self { inner })
    }

    /// Drop entities idle for longer than their kind's TTL; returns how many were dropped.
    ///
    /// An entity is dropped when its newest event time is older than `watermark_ms - TTL`;
    /// `watermark_ms=None` uses the largest event time processed so far. Releases the GIL.
    #[pyo3(signature = (watermark_ms = None))]
    fn evict_idle(&mut self, py: Python<'_>, watermark_ms: Option<i64>) -> usize {
        let engine = &mut self.inner;
        py.detach(|| engine.evict_idle(watermark_ms))
    }

    /// Entity counts, retained events and heap bytes of the state, as a dict of ints.
    ///
    /// Keys: `cards`, `merchants`, `users`, `card_events`, `merchant_events`, `user_events`,
    /// `state_bytes` and its split `card_bytes`, `merchant_bytes`, `user_bytes`,
    /// `label_bytes`; `label_entities` and `labels` (label state). Releases the GIL while
    /// counting.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let engine = &self.inner;
        let s = py.detach(|| engine.stats());
        let d = PyDict::new(py);
        d.set_item("cards", s.cards)?;
        d.set_item("merchants", s.merchants)?;
        d.set_item("users", s.users)?;
        d.set_item("card_events", s.card_events)?;
        d.set_item("merchant_events", s.merchant_events)?;
        d.set_item("user_events", s.user_events)?;
        d.set_item("state_bytes", s.state_bytes)?;
        d.set_item("card_bytes", s.card_bytes)?;
        d.set_item("merchant_bytes", s.merchant_bytes)?;
        d.set_item("user_bytes", s.user_bytes)?;
        d.set_item("label_entities", s.label_entities)?;
        d.set_item("labels", s.labels)?;
        d.set_item("label_bytes", s.label_bytes)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "FeatureEngine(card_windows_ms={:?}, merchant_windows_ms={:?}, user_windows_ms={:?}, \
             allowed_lateness_ms={}, idle_ttl_ms={:?}, shards={}, \
             merchant_label_windows_ms={:?}, card_label_windows_ms={:?})",
            c.card_windows_ms,
            c.merchant_windows_ms,
            c.user_windows_ms,
            c.allowed_lateness_ms,
            c.idle_ttl_ms,
            c.shards,
            c.merchant_label_windows_ms,
            c.card_label_windows_ms
        )
    }
}

/// Stable 64-bit id of a string: FNV-1a 64 of its UTF-8 bytes, splitmix64 finaliser, never 0.
#[pyfunction]
fn hash_id(value: &str) -> u64 {
    hash::hash_id(value.as_bytes())
}

/// `hash_id` of every string of a sequence as a uint64 array; `None` and `""` give 0.
#[pyfunction]
fn hash_ids<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray1<u64>>> {
    let mut out = Vec::with_capacity(values.len().unwrap_or(0));
    for item in values.try_iter()? {
        let item = item?;
        if item.is_none() {
            out.push(0);
            continue;
        }
        let s = item.cast::<PyString>()?.to_str()?;
        out.push(if s.is_empty() {
            0
        } else {
            hash::hash_id(s.as_bytes())
        });
    }
    Ok(out.into_pyarray(py))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("FEATURE_VERSION", FEATURE_VERSION)?;
    m.add_class::<PyFeatureEngine>()?;
    m.add_function(wrap_pyfunction!(hash_id, m)?)?;
    m.add_function(wrap_pyfunction!(hash_ids, m)?)?;
    Ok(())
}
