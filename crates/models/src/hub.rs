//! Hub download (H2 fills this in).
