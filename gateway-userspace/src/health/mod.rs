//! Health probing (being written).
