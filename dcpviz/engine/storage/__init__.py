"""Storage writers and readers other than DCP's FileSystemWriter: a writer's own planning steps
(``writer_plan``), what a Hugging Face save wrote (``hf_facts``), and the saved side of a load
from a Hugging Face folder (``hf_load``)."""
