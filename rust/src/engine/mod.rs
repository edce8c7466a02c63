//! Per-entity event-time window state and batch feature building (see docs/features.md).
