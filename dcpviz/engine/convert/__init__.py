"""DCP's objects <-> trace records: ``shared`` (dtypes, metadata, planner info, item tables),
``save`` (SavePlans and WriteItems) and ``load`` (ReadItems and target values), side by side."""
