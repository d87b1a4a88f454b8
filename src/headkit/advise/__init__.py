"""`headkit advise`: facts about the data and machine, measured step costs, the rule table,
and the plan (with commands to run it)."""
