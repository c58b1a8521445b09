"""Reports: summary tables, figures, the unit browser and the Markdown results."""
