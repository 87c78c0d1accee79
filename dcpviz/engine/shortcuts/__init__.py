"""Every exact speed-up of the simulator, each calling DCP's own code on inputs proven equivalent
and checked against it: ``fastpath`` (one recipe run, one plan per class of ranks, rank views),
``write_memo`` (save), ``validation`` (save), ``overlap`` (the load shortcut), and ``guards``
(whether a function is still DCP's own; ``patched``, the one helper that swaps a torch module
global for the duration of a block). Only the simulator imports this package (an import-linter
contract)."""
