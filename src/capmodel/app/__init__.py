"""The application around the library: the capmodel command line, the pipeline stages
it runs for the workflow, every setting with its flags and schema, the report helpers and
the gradient-check suite. It imports the library; the library never imports it."""
