"""Tables and answers of a load trace: ``tables`` (reads, mismatches), ``verdict`` (does it go
through), ``hints`` / ``hints_training`` / ``hint_base`` (causes and fixes), ``fix`` (the one fix)."""
