"""Everything about schedules: default (untuned) CPU schedules today; tuning lives here too."""
