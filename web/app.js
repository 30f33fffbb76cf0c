/* placeholder: replaced by the chat page work */
