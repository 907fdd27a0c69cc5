"""Paper figures: one module per figure, each declaring its `SPEC` and `render` (see `registry`).

`style` holds what the figures share (sizes, fonts, colours, saving); `registry` finds the
figure modules of this package and is what the rules, the report and the tests read.
"""
