"""compare: evaluation and reporting -- eval-all, summarize, paired statistics, tables, plots."""
