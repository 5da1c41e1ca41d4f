"""Model plugins: what a plugin declares (`plugin_api`), how plugins are found
(`plugins`), what a prediction is (`predictions`), labelled photo folders
(`image_folder`), the cache of prepared data (`cache`) and the training helpers the
codecs share (`training`)."""
