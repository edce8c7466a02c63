//! Binding of the tree explainer: flat tree arrays in, contributions or JSON documents out.

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::error::TxError;
use crate::explain::{Method, TreeArrays, TreeEnsemble};

/// Feature attributions of a tree ensemble (TreeSHAP or path attribution).
#[pyclass(module = "txfast._core", name = "TreeExplainer", frozen)]
struct PyTreeExplainer {
    inner: TreeEnsemble,
}

fn slice<'a, T: numpy::Element>(name: &str, a: &'a PyReadonlyArray1<'_, T>) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| TxError::Input(format!("array {name} is not contiguous")).into())
}

fn matrix<'a>(x: &'a PyReadonlyArray2<'_, f32>, width: usize) -> PyResult<&'a [f32]> {
    let shape = x.shape();
    if shape[1] != width {
        return Err(TxError::Input(format!(
            "feature matrix has {} columns, the model {width}",
            shape[1]
        ))
        .into());
    }
    x.as_slice()
        .map_err(|_| TxError::Input("feature matrix is not C-contiguous".into()).into())
}

#[pymethods]
impl PyTreeExplainer {
    /// Build from flat node arrays (see `txfast.explain`): offsets int64 `[T+1]`, feature
    /// int32, threshold float64, left/right int32 (tree-relative, -1 for leaves),
    /// default_left bool, value float64 (leaf outputs), cover float64.
    #[new]
    #[pyo3(signature = (
        tree_offsets, feature, threshold, left, right, default_left, value, cover,
        *, n_features, strict_less, base = 0.0, scale = 1.0,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        tree_offsets: PyReadonlyArray1<'_, i64>,
        feature: PyReadonlyArray1<'_, i32>,
        threshold: PyReadonlyArray1<'_, f64>,
        left: PyReadonlyArray1<'_, i32>,
        right: PyReadonlyArray1<'_, i32>,
        default_left: PyReadonlyArray1<'_, bool>,
        value: PyReadonlyArray1<'_, f64>,
        cover: PyReadonlyArray1<'_, f64>,
        n_features: usize,
        strict_less: bool,
        base: f64,
        scale: f64,
    ) -> PyResult<Self> {
        let arrays = TreeArrays {
            tree_offsets: slice("tree_offsets", &tree_offsets)?,
            feature: slice("feature", &feature)?,
            threshold: slice("threshold", &threshold)?,
            left: slice("left", &left)?,
            right: slice("right", &right)?,
            default_left: slice("default_left", &default_left)?,
            value: slice("value", &value)?,
            cover: slice("cover", &cover)?,
        };
        Ok(Self {
            inner: TreeEnsemble::new(arrays, n_features, strict_less, base, scale)?,
        })
    }

    /// Number of input features.
    #[getter]
    fn n_features(&self) -> usize {
        self.inner.n_features()
    }

    /// Number of trees.
    #[getter]
    fn n_trees(&self) -> usize {
        self.inner.n_trees()
    }

    /// Expected model output (the bias of every explanation).
    #[getter]
    fn expected_value(&self) -> f64 {
        self.inner.expected_value()
    }

    /// Contributions, float64 `(n, n_features + 1)` (last column: the bias). Releases the GIL.
    fn contributions<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f32>,
        method: &str,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let method = Method::parse(method)?;
        let f = self.inner.n_features();
        let data = matrix(&x, f)?;
        let rows = x.shape()[0];
        let inner = &self.inner;
        let out = py.detach(|| inner.contributions(data, method))?;
        let m = Array2::from_shape_vec((rows, f + 1), out).expect("rows × (F + 1) cells");
        Ok(m.into_pyarray(py))
    }

    /// One JSON explanation per row with the `top_k` largest contributions. Releases the GIL.
    #[pyo3(signature = (x, method, feature_names, *, units, top_k = 5))]
    fn explain_json(
        &self,
        py: Python<'_>,
        x: PyReadonlyArray2<'_, f32>,
        method: &str,
        feature_names: Vec<String>,
        units: &str,
        top_k: usize,
    ) -> PyResult<Vec<String>> {
        let method = Method::parse(method)?;
        let data = matrix(&x, self.inner.n_features())?;
        let inner = &self.inner;
        Ok(py.detach(|| inner.explain_json(data, method, &feature_names, units, top_k))?)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTreeExplainer>()?;
    Ok(())
}
