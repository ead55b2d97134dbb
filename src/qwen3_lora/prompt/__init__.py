"""From a record to model inputs: the one prompt renderer and the label-masked encoding."""
