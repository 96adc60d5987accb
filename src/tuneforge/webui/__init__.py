"""`tuneforge webui`: a gradio front end over the CLI's own code paths.

    app.py         builds the Blocks and serves them (`launch(host, port, share, lang)`)
    args.py        UI values -> config dict -> YAML, validated by the config loader
    jobs.py        JobManager: one `tuneforge train <yaml>` subprocess at a time, followed via its files
    chat.py        ChatSession: load / unload a ChatEngine on demand, stream answers
    i18n.py        English and Chinese strings
    components/    one module per tab
"""
