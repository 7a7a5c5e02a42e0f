"""What the launch tools share: one-line errors and exit codes (`errors`), the persistent compilation
cache (`compile_cache`). `errors.UserError` is also what the library raises for a bad input."""
