"""`tuneforge webui`: a gradio front end over the CLI's own code paths.

    app.py         builds the Blocks and serves them (`launch(host, port, share, lang, auth)`)
    args.py        UI values -> config dict -> YAML, validated by the config loader
    safety.py      what the UI may read, write and expose: saved-argument names, the output root,
                   remote code, a password when served beyond loopback
    jobs.py        JobManager: one `tuneforge train <yaml>` subprocess at a time, followed via its files
    chat.py        ChatSession: load / unload a ChatEngine on demand, stream answers
    i18n.py        English and Chinese strings
    components/    one module per tab
"""
