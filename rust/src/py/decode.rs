//! Binding of the batch decoder: payloads in, numpy columns and rejects out.

use std::collections::HashMap;

use numpy::{IntoPyArray, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::decode::{
    decode_batch, split_lines, Decoded, DecoderConfig, Reason, StrColumn, CHANNELS,
};
use crate::error::TxError;
use crate::tabular::{decode_table, NumInput, StrInput, Table, Validity};

/// A string column from Python: `(offsets, data, validity bitmap, bitmap offset)`.
type PyStrColumn<'py> = (
    PyReadonlyArray1<'py, i64>,
    PyReadonlyArray1<'py, u8>,
    PyReadonlyArray1<'py, u8>,
    usize,
);
/// A numeric column from Python: `(values, validity bitmap, bitmap offset)`.
type PyNumColumn<'py, T> = (PyReadonlyArray1<'py, T>, PyReadonlyArray1<'py, u8>, usize);

fn str_input<'a>(
    columns: &'a HashMap<String, PyStrColumn<'_>>,
    name: &str,
) -> PyResult<StrInput<'a>> {
    let (offsets, data, bitmap, offset) = columns
        .get(name)
        .ok_or_else(|| TxError::Input(format!("string column `{name}` is missing")))?;
    Ok(StrInput {
        offsets: offsets.as_slice()?,
        data: data.as_slice()?,
        valid: Validity {
            bitmap: bitmap.as_slice()?,
            offset: *offset,
        },
        utf8: false,
    })
}

fn num_input<'a, T: numpy::Element>(column: &'a PyNumColumn<'_, T>) -> PyResult<NumInput<'a, T>> {
    let (values, bitmap, offset) = column;
    Ok(NumInput {
        values: values.as_slice()?,
        valid: Validity {
            bitmap: bitmap.as_slice()?,
            offset: *offset,
        },
    })
}

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
    for (name, column) in [
        ("card_id", c.card_id),
        ("user_id", c.user_id),
        ("merchant_id", c.merchant_id),
        ("merchant_category", c.merchant_category),
        ("country_code", c.country_code),
        ("currency", c.currency),
        ("channel_name", c.channel_name),
        ("device_id", c.device_id),
    ] {
        if c.ids_only {
            out.set_item(name, py.None())?;
        } else {
            out.set_item(name, str_column(py, column)?)?;
        }
    }
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

    /// Decode one batch of a history table, one typed column per contract field (see
    /// `txfast.decode.Decoder.decode_table`); `index` in the result is the row number.
    /// With `ids_only`, the string columns other than `transaction_id` are None.
    /// Releases the GIL while validating.
    #[pyo3(signature = (rows, strings, numbers, label, *, ids_only = false))]
    fn decode_table<'py>(
        &self,
        py: Python<'py>,
        rows: usize,
        strings: HashMap<String, PyStrColumn<'py>>,
        numbers: HashMap<String, PyNumColumn<'py, f64>>,
        label: PyNumColumn<'py, i64>,
        ids_only: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let num = |name: &str| {
            numbers
                .get(name)
                .ok_or_else(|| TxError::Input(format!("numeric column `{name}` is missing")))
                .map_err(PyErr::from)
                .and_then(num_input)
        };
        let table = Table {
            rows,
            transaction_id: str_input(&strings, "transaction_id")?,
            timestamp_ms: num("timestamp_ms")?,
            timestamp_text: str_input(&strings, "timestamp_text")?,
            card_id: str_input(&strings, "card_id")?,
            user_id: str_input(&strings, "user_id")?,
            amount: num("amount")?,
            currency: str_input(&strings, "currency")?,
            merchant_id: str_input(&strings, "merchant_id")?,
            merchant_category: str_input(&strings, "merchant_category")?,
            country: str_input(&strings, "country")?,
            lat: num("lat")?,
            lon: num("lon")?,
            channel: str_input(&strings, "channel")?,
            device_id: str_input(&strings, "device_id")?,
            label: num_input(&label)?,
            unreadable: str_input(&strings, "unreadable")?,
        };
        let cfg = &self.cfg;
        let decoded = py.detach(|| decode_table(&table, cfg, ids_only))?;
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
