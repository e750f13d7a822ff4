"""Pure rules of batchyard: no I/O, time comes in as an argument."""
