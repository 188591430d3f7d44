"""Backend-specific code. Everything outside this folder is portable Keras (`keras.ops`)."""
