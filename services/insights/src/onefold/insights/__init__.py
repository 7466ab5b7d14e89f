"""Insights: funnels, attribution, cohorts, campaign ROI and model tags over an analytical copy of the history."""
