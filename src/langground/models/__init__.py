"""Model zoo: importing this package registers every model."""
