//! Binding of the batch decoder: payloads in, numpy columns and rejects out.

use std::collections::HashMap;

use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::decode::{
    decode_batch, split_lines, Decoded, DecoderConfig, Reason, StrColumn, CHANNELS,
};

/// Decodes and validates raw JSON events into columns (see `txfast.decode.Decoder`).
#[pyclass(module = "txfast._core", name = "Decoder", frozen)]
struct PyDecoder {
    cfg: DecoderConfig,
}

fn str_column<'py>(py: Python<'py>, c: StrColumn) -> PyResult<Bound<'py, PyTuple>> {
    let offsets = c.offsets.into_pyarray(py);
    let data = c.data.into_pyarray(py);
    let valid = c.valid.into_pyarray(py);
    PyTuple::new(py, [offsets.into_any(), data.into_any(), valid.into_any()])
}

fn to_dict<'py>(py: Python<'py>, d: Decoded) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    let c = d.columns;
    out.set_item("index", c.index.into_pyarray(py))?;
    out.set_item("ts_ms", c.ts_ms.into_pyarray(py))?;
    out.set_item("amount", c.amount.into_pyarray(py))?;
    out.set_item("amount_base", c.amount_base.into_pyarray(py))?;
    out.set_item("lat", c.lat.into_pyarray(py))?;
    out.set_item("lon", c.lon.into_pyarray(py))?;
    out.set_item("channel", c.channel.into_pyarray(py))?;
    out.set_item("label", c.label.into_pyarray(py))?;
    out.set_item("card", c.card.into_pyarray(py))?;
    out.set_item("merchant", c.merchant.into_pyarray(py))?;
    out.set_item("user", c.user.into_pyarray(py))?;
    out.set_item("category", c.category.into_pyarray(py))?;
    out.set_item("country", c.country.into_pyarray(py))?;
    out.set_item("transaction_id", str_column(py, c.transaction_id)?)?;
    out.set_item("card_id", str_column(py, c.card_id)?)?;
    out.set_item("user_id", str_column(py, c.user_id)?)?;
    out.set_item("merchant_id", str_column(py, c.merchant_id)?)?;
    out.set_item("merchant_category", str_column(py, c.merchant_category)?)?;
    out.set_item("country_code", str_column(py, c.country_code)?)?;
    out.set_item("currency", str_column(py, c.currency)?)?;
    out.set_item("channel_name", str_column(py, c.channel_name)?)?;
    out.set_item("device_id", str_column(py, c.device_id)?)?;
    let rejects = PyList::empty(py);
    for r in d.rejects {
        rejects.append((r.index, r.reason.code(), r.message))?;
    }
    out.set_item("rejects", rejects)?;
    Ok(out)
}

#[pymethods]
impl PyDecoder {
    #[new]
    #[pyo3(signature = (*, base_currency = "EUR", rates = HashMap::new(), max_event_bytes = 1_048_576, max_amount = 1e9))]
    fn new(
        base_currency: &str,
        rates: HashMap<String, f64>,
        max_event_bytes: usize,
        max_amount: f64,
    ) -> PyResult<Self> {
        Ok(Self {
            cfg: DecoderConfig::new(base_currency, rates, max_event_bytes, max_amount)?,
        })
    }

    /// Decode a sequence of payloads (`bytes`; `None` counts as an empty message).
    ///
    /// Returns a dict of numpy columns (string columns as `(offsets, data, valid)`) and
    /// `rejects`, a list of `(index, reason, message)`. Releases the GIL while parsing.
    fn decode<'py>(
        &self,
        py: Python<'py>,
        payloads: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let items: Vec<Bound<'py, PyAny>> = payloads.try_iter()?.collect::<PyResult<_>>()?;
        let mut slices: Vec<&[u8]> = Vec::with_capacity(items.len());
        for it in &items {
            if it.is_none() {
                slices.push(&[]);
            } else {
                let b = it.cast::<PyBytes>().map_err(|_| {
                    pyo3::exceptions::PyTypeError::new_err(format!(
                        "payloads must be bytes or None, got {}",
                        it.get_type()
                            .name()
                            .map(|n| n.to_string())
                            .unwrap_or_default()
                    ))
                })?;
                slices.push(b.as_bytes());
            }
        }
        let cfg = &self.cfg;
        let decoded = py.detach(|| decode_batch(&slices, cfg));
        to_dict(py, decoded)
    }

    /// Decode a JSON-lines buffer; `index` in the result is the 0-based line number.
    /// Releases the GIL while parsing.
    fn decode_lines<'py>(&self, py: Python<'py>, buffer: &[u8]) -> PyResult<Bound<'py, PyDict>> {
        let cfg = &self.cfg;
        let decoded = py.detach(|| decode_batch(&split_lines(buffer), cfg));
        to_dict(py, decoded)
    }

    /// Decode payloads stored back to back in `data`, payload `i` being
    /// `data[offsets[i]:offsets[i + 1]]` (Arrow's string layout). Releases the GIL while parsing.
    fn decode_offsets<'py>(
        &self,
        py: Python<'py>,
        data: numpy::PyReadonlyArray1<'py, u8>,
        offsets: numpy::PyReadonlyArray1<'py, i64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let data = data.as_slice()?;
        let offsets = offsets.as_slice()?;
        let mut slices: Vec<&[u8]> = Vec::with_capacity(offsets.len().saturating_sub(1));
        for w in offsets.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a < 0 || b < a || b as usize > data.len() {
                return Err(crate::error::TxError::Input(format!(
                    "offsets {a}..{b} are outside the data buffer of {} bytes",
                    data.len()
                ))
                .into());
            }
            slices.push(&data[a as usize..b as usize]);
        }
        let cfg = &self.cfg;
        let decoded = py.detach(|| decode_batch(&slices, cfg));
        to_dict(py, decoded)
    }

    /// The base currency.
    #[getter]
    fn base_currency(&self) -> &str {
        &self.cfg.base_currency
    }

    /// The rates table, base currency included.
    #[getter]
    fn rates(&self) -> HashMap<String, f64> {
        self.cfg.rates.clone()
    }
}

/// Byte offsets of the lines of a JSON-lines buffer, as `(starts, ends)` (for slicing the
/// original bytes of rejected lines).
#[pyfunction]
fn line_spans<'py>(
    py: Python<'py>,
    buffer: &[u8],
) -> (
    Bound<'py, numpy::PyArray1<i64>>,
    Bound<'py, numpy::PyArray1<i64>>,
) {
    let base = buffer.as_ptr() as usize;
    let lines = split_lines(buffer);
    let starts: Vec<i64> = lines
        .iter()
        .map(|l| (l.as_ptr() as usize - base) as i64)
        .collect();
    let ends: Vec<i64> = lines
        .iter()
        .zip(&starts)
        .map(|(l, s)| s + l.len() as i64)
        .collect();
    (starts.into_pyarray(py), ends.into_pyarray(py))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDecoder>()?;
    m.add_function(wrap_pyfunction!(line_spans, m)?)?;
    m.add("CHANNELS", CHANNELS.to_vec())?;
    m.add(
        "REJECT_REASONS",
        Reason::ALL.iter().map(|r| r.code()).collect::<Vec<_>>(),
    )?;
    Ok(())
}
