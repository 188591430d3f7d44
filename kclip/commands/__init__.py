"""The `kclip` command's subcommands, one module each (kclip/cli.py dispatches to them).

Each module has `main(argv=None, prog=None)`; the files in scripts/ call the same functions,
so `python scripts/train.py ...` and `kclip train ...` take the same flags. Importing a module
here runs nothing.
"""

# name -> (module, one-line summary); the order is the order of a user's work.
COMMANDS = {
    "demo": ("kclip.commands.demo", "train the embedded demo, index its held-out images, report recall, search"),
    "train": ("kclip.commands.train", "train a dual encoder from a YAML config (clip-lightning's flags work too)"),
    "evaluate": ("kclip.commands.evaluate", "retrieval recall of a saved model on one split"),
    "index": ("kclip.commands.index", "build or update the search index of a folder of images"),
    "search": ("kclip.commands.search", "search an index by text, or by example with an image path"),
    "serve": ("kclip.commands.serve", "serve a local web page to search an index"),
    "convert": ("kclip.commands.convert", "convert a clip-lightning checkpoint into a kclip model"),
}
