"""The unit browser: one static page (results/browser/index.html) joining what each unit sees
(concepts, masks, top images) with what it is for (the classes it hurts), for every studied
(model, layer, basis).

`cards` builds one (model, layer, basis) from its tables and stores, `outlines` and `svg` draw
the figures the page shows, and `page` writes the page and the images beside it. Torch-free.
"""
