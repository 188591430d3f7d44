"""A searchable image index: the on-disk store, exact and ANN search, text and image queries."""
