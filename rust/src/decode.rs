//! JSON event decoding and validation straight into columns.
